"""The cards as files: one Markdown card per method and model in the structure of Saliency Cards (Boggust et al.,
2023), an index, one plot of the randomisation curves per model, and cards.json with every figure."""

from __future__ import annotations

import json
from pathlib import Path

from cbam_viz.cam.engine import METHODS
from cbam_viz.cards.methods import INFO
from cbam_viz.cards.randomisation import (
    CASCADE,
    CLASS_FREE_ABOVE,
    FIGURE_LABELS,
    FIGURES,
    PASS_BELOW,
    RULE_FIGURES,
)
from cbam_viz.cards.verdict import CARDS_JSON, VERDICTS
from cbam_viz.io.fileio import atomic_write_bytes

MARKS = {"passes": "&#128994;", "class-independent": "&#129000;", "inconclusive": "&#129000;", "fails": "&#128997;"}
FAITHFULNESS = (
    ("deletion_auc", "Deletion", "https://arxiv.org/abs/1806.07421",
     "area under the class's softmax P as the most relevant pixels are deleted first (lower is better)"),
    ("insertion_auc", "Insertion", "https://arxiv.org/abs/1806.07421",
     "area under P as the most relevant pixels are put back into a blurred copy first (higher is better)"),
    ("road", "ROAD", "https://arxiv.org/abs/2202.00449",
     ("(P after removing the least relevant − P after removing the most relevant pixels) / 2, over 10–90% "
     "removed by noisy linear imputation (higher is better)")),
)
LOCALIZATION = (
    ("pointing", "The Pointing Game", "https://arxiv.org/abs/1608.00507",
     "the heatmap's peak lies within 15 px (at 224 px) of the object", True),
    ("energy", "Energy in the object", "https://arxiv.org/abs/1910.01279",
     "share of the heatmap's mass inside the object's mask", True),
    ("localization", "Weakly-supervised localization", "https://arxiv.org/abs/1610.02391",
     "the box around the largest region above 15% of the peak overlaps the object's box with IoU ≥ 0.5", True),
)


def slug(method: str) -> str:
    """A method's name as it appears in file names: gradcam++ -> gradcampp."""
    return method.replace("+", "p")


def card_file(method: str, key: str) -> str:
    """File name of the card of `method` on model `key`."""
    return f"{slug(method)}-{key}.md"


def combined_verdict(judgements: dict[str, str], names: dict[str, str]) -> str:
    """One line for a method over the models: the shared verdict, or how the check came out on each model."""
    if len(set(judgements.values())) == 1:
        return VERDICTS[next(iter(judgements.values()))]
    outcomes = {"passes": "passes", "fails": "fails", "inconclusive": "inconclusive",
                "class-independent": "independent of the class"}
    return "model-randomisation check: " + ", ".join(f"{outcomes[j]} on {names[k]}" for k, j in judgements.items())


def interval(stat: dict, percent: bool = False) -> str:
    """`mean [low, high]` of a summary, as a percentage where asked."""
    scale, unit = (100, "%") if percent else (1, "")
    return f"{scale * stat['mean']:.1f}{unit} [{scale * stat['low']:.1f}, {scale * stat['high']:.1f}]" if percent \
        else f"{stat['mean']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]"


def rule_text() -> str:
    """The pass rule in words."""
    figures = " and the ".join(FIGURE_LABELS[f] for f in RULE_FIGURES)
    return (f"passes where the 95% intervals of the means of the {figures} lie below {PASS_BELOW} once fc and "
            f"layer4 (the layers a layer4 map is computed from) are random, fails where one lies at or above it, and "
            f"is inconclusive where one crosses it; independent of the class where the absolute maps' Spearman "
            f"correlation stays at or above {CLASS_FREE_ABOVE} with only fc random")


def methodology(method: str, report: dict) -> list[str]:
    """The card's Methodology section with its Saliency Cards subsections."""
    info, spec, settings = INFO[method], METHODS[method], report["settings"]
    lines = ["## Methodology", info.computes]
    if info.note:
        lines += ["", info.note]
    lines += [
        "",
        f"- **Developed by:** {info.authors}",
        f"- **References:** [{info.paper}]({info.url})",
        f"- **Implementation:** grad-cam's `pytorch_grad_cam.{spec.cam_class.__name__}`"
        + (" (its weights, computed in memory-bounded batches)" if spec.slow else "")
        + ", run by `cbam_viz.cam.engine` for the app, the API and the export",
        "",
        "### Determinism",
        info.determinism,
        "",
        "### Hyperparameter Dependence",
        (f"- **Layer:** `{settings['layer']}` here (the app's default; the app also offers layer1–layer3). The map "
         f"has "
        f"the layer's resolution: {settings['map_side']}×{settings['map_side']} at {settings['input_size']} px."),
        (f"- **Interpolation:** {settings['interpolation']}, from the layer's resolution to the image, after the ReLU "
        "and a normalisation of each map to [0, 1]."),
        "- **Target class:** " + ("the class explained; here each scene's true class." if info.class_specific
                                  else "none: the map is the same whichever class is asked for."),
        "",
        "### Model Agnosticism",
        "Needs a convolutional network and access to a layer's activations"
        + (" and the gradient of the class's logit w.r.t. them." if spec.gradients else
           (" and to its outputs on masked inputs; no gradient." if spec.slow else "; no gradient, no class.")),
        "",
    ]
    return lines


def efficiency_and_directness(method: str, measured: dict, report: dict) -> list[str]:
    """Computational Efficiency (measured) and Semantic Directness."""
    cost, info = measured["cost_ms"], INFO[method]
    runs = "one run" if cost["runs"] == 1 else f"the fastest of {cost['runs']} runs after one untimed run"
    return [
        "### Computational Efficiency",
        f"**{cost['wall']:,.0f} ms per image** at {report['settings']['input_size']} px on the CPU with "
        f"{cost['threads']} threads ({cost['cpu']:,.0f} ms of CPU time): the app's whole path (forward pass, map, "
        f"heatmap), {runs}, measured in the run that wrote this card."
        + (" One forward pass per channel of the layer." if METHODS[method].slow else ""),
        "",
        "### Semantic Directness",
        "A heatmap over the image, normalised to [0, 1] per image: values compare positions within one map, not "
        "maps with each other. "
        + ("It shows where the layer's features push the class's score up, as " + info.summary + "."
           if info.class_specific else "It shows the dominant pattern of the layer's features, whatever the class."),
        "",
    ]


def sensitivity(method: str, key: str, measured: dict) -> list[str]:
    """Sensitivity Testing: faithfulness (input sensitivity) and cascading randomisation (model sensitivity)."""
    lines = ["## Sensitivity Testing", "", "### Input Sensitivity",
             f"On the first {measured['faithfulness_scenes']} scenes; no pass threshold: compare the methods.", ""]
    for metric, label, url, what in FAITHFULNESS:
        lines += [f"- **[{label}]({url})**: {interval(measured['faithfulness'][metric])}, {what}."]
    judgement = measured["judgement"]
    lines += [
        "", "### Model Sensitivity", "",
        (f"{MARKS[judgement]} **[Cascading Model Parameter Randomization](https://arxiv.org/abs/1810.03292)**: "
        f"{VERDICTS[judgement]}. The layers are randomised from the top, cumulatively, each to the values a fresh "
        "model starts from; each figure compares the trained model's map of a scene with the randomised one's (1: "
        f"alike; mean over {measured['scenes']} scenes [95% interval]). Rule: {rule_text()}."),
        "",
        "| randomised | " + " | ".join(FIGURE_LABELS[f] for f in FIGURES) + " |",
        "| --- |" + " --- |" * len(FIGURES),
    ]
    for depth, stage in enumerate(CASCADE):
        randomised = " + ".join(CASCADE[: depth + 1])
        lines.append(f"| {randomised} | " + " | ".join(interval(measured["curve"][stage][f]) for f in FIGURES) + " |")
    lines += ["", f"![Randomisation curves of every method on this model](randomisation-{key}.png)", ""]
    return lines


def perceptibility(measured: dict) -> list[str]:
    """Perceptibility Testing: localization of the object, with the heatmap of its true class."""
    lines = ["## Perceptibility Testing", "", "### Perceptual Correspondence",
             f"On {measured['scenes']} scenes, mean [95% interval]; no pass threshold: compare the methods.", ""]
    for metric, label, url, what, percent in LOCALIZATION:
        lines.append(f"- **[{label}]({url})**: {interval(measured['localization'][metric], percent)}, {what}.")
    return lines + [""]


def render_card(method: str, key: str, report: dict) -> str:
    """The Markdown card of `method` on model `key`."""
    info, model = INFO[method], report["models"][key]
    measured = report["methods"][method]["models"][key]
    data = report["data"]
    lines = [
        f"# {METHODS[method].label} Saliency Card: {model['name']}",
        (f"{METHODS[method].label} is {info.summary}. Verdict on {model['name']} (`{model['checkpoint']}`): "
         f"**{VERDICTS[measured['judgement']]}**."),
        "",
        *methodology(method, report),
        *efficiency_and_directness(method, measured, report),
        *sensitivity(method, key, measured),
        *perceptibility(measured),
        "## Measured on",
        f"The first {measured['scenes']} scenes of the `{data['split']}` split of stamp scenes (dataset "
        f"{data['dataset_hash'][:12]}, {data['available']} scenes), each explained for its true class at "
        f"{report['settings']['input_size']} px; faithfulness on the first {measured['faithfulness_scenes']}, "
        f"deletion and insertion in {report['settings']['steps']} steps."
        + (" ScoreCAM costs one forward pass per channel, so it is measured on fewer scenes than the other methods."
           if METHODS[method].slow else ""),
        f"Written by `python -m cbam_viz cards`; every figure is in [{CARDS_JSON}]({CARDS_JSON}).",
        "",
        "## Citation",
        "```bibtex",
        info.bibtex,
        "```",
        "",
    ]
    return "\n".join(lines)


def render_index(report: dict) -> str:
    """docs/cards/README.md: every method's verdict and headline figures on each model, linking the cards."""
    keys = list(report["models"])
    lines = [
        "# Saliency cards of the CAM methods",
        "",
        ("One card per CAM method the app offers and per bundled model, in the structure of [Saliency Cards]"
        "(https://arxiv.org/abs/2206.02958) (Boggust et al., 2023), written by `python -m cbam_viz cards`. "
        f"Model dependence: cascading parameter randomisation (Adebayo et al., 2018); {rule_text()}. "
        "Figures are means over the scenes each card names."),
        "",
        ("| method | verdict | model | Spearman, fc + layer4 random | SSIM, fc + layer4 random | deletion AUC ↓ | "
        "insertion AUC ↑ | "
        "ROAD ↑ | pointing game | ms per image |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, entry in report["methods"].items():
        for key in keys:
            if key not in entry["models"]:
                continue
            m = entry["models"][key]
            lines.append(
                f"| [{METHODS[method].label}]({card_file(method, key)}) | {entry['verdict']} | "
                f"{report['models'][key]['name']} | {m['curve']['layer4']['spearman']['mean']:.2f} | "
                f"{m['curve']['layer4']['ssim']['mean']:.2f} | "
                f"{m['faithfulness']['deletion_auc']['mean']:.3f} | {m['faithfulness']['insertion_auc']['mean']:.3f} | "
                f"{m['faithfulness']['road']['mean']:.3f} | {100 * m['localization']['pointing']['mean']:.1f}% | "
                f"{m['cost_ms']['wall']:,.0f} |"
            )
    lines += [""] + [f"![Randomisation curves on {report['models'][k]['name']}](randomisation-{k}.png)" for k in keys]
    return "\n".join(lines) + "\n"


def plot_curves(report: dict, key: str, path: Path) -> None:
    """One PNG per model: each figure's mean over the scenes after each randomisation stage, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FIGURES), figsize=(4.2 * len(FIGURES), 3.6), sharey=True)
    stages = ["none", *(f"+{stage}" if i else stage for i, stage in enumerate(CASCADE))]
    for index, (method, entry) in enumerate(report["methods"].items()):
        measured = entry["models"].get(key)
        if measured is None:
            continue
        for ax, figure in zip(axes, FIGURES):  # marker and dashes apart: methods that draw one map overlap
            values = [1.0, *(measured["curve"][stage][figure]["mean"] for stage in CASCADE)]
            ax.plot(stages, values, marker="os^Dvxp"[index % 7], ls=("-", "--", ":", "-.")[index % 4], alpha=0.8,
                    label=f"{METHODS[method].label} (n={measured['scenes']})")
    for ax, figure in zip(axes, FIGURES):
        ax.axhline(PASS_BELOW, color="grey", lw=0.8, ls="--")
        ax.set_title(FIGURE_LABELS[figure], fontsize=9)
        ax.set_xlabel("randomised, from the top")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    axes[0].set_ylabel("similarity to the trained model's map")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=len(METHODS), frameon=False)
    fig.suptitle(f"Cascading parameter randomisation: {report['models'][key]['name']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_cards(report: dict, out: Path) -> list[Path]:
    """Write cards.json, every card the report holds, the index and one plot per model into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / CARDS_JSON, out / "README.md"]
    atomic_write_bytes(written[0], (json.dumps(report, indent=1, allow_nan=True) + "\n").encode())
    atomic_write_bytes(written[1], render_index(report).encode())
    for key in {key for entry in report["methods"].values() for key in entry["models"]}:
        plot = out / f"randomisation-{key}.png"
        plot_curves(report, key, plot)
        written.append(plot)
    for method, entry in report["methods"].items():
        for key in entry["models"]:
            written.append(out / card_file(method, key))
            atomic_write_bytes(written[-1], render_card(method, key, report).encode())
    return written
