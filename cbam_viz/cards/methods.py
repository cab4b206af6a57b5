"""What each CAM method computes, who made it and how to cite it: the fixed part of its saliency card."""

from __future__ import annotations

from dataclasses import dataclass

LAYER4_NOTE = (
    "At layer4 of a ResNet the gradient of a logit is the same at every position (layer4's output is average-pooled "
    "into fc: d y_c / d A_k(i,j) = W_fc[c,k] / (h·w)), so Grad-CAM, HiResCAM and XGradCAM draw the same map there; "
    "they differ at the other layers."
)


@dataclass(frozen=True)
class MethodInfo:
    """The fixed text of a method's card."""

    summary: str
    computes: str
    authors: str
    paper: str
    url: str
    bibtex: str
    determinism: str = "Deterministic: the same model, image and class give the same map."
    class_specific: bool = True
    note: str = ""


GRADIENT_AGNOSTIC = "Needs a differentiable convolutional network and its gradients at the chosen layer."
INFO: dict[str, MethodInfo] = {
    "gradcam": MethodInfo(
        "a model-dependent, gradient-based class activation map for convolutional networks",
        "Weighs each channel k of the chosen layer's activations A_k by the spatial mean of the gradient of the "
        "class's logit w.r.t. A_k, sums the weighted channels and keeps the positive part: ReLU(Σ_k w_k A_k).",
        "Ramprasaath R. Selvaraju, Michael Cogswell, Abhishek Das, Ramakrishna Vedantam, Devi Parikh, Dhruv Batra",
        "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization (ICCV 2017)",
        "https://arxiv.org/abs/1610.02391",
        "@inproceedings{selvaraju2017gradcam,\n  title={Grad-CAM: Visual Explanations from Deep Networks via "
        "Gradient-Based Localization},\n  author={Selvaraju, Ramprasaath R. and Cogswell, Michael and Das, Abhishek "
        "and Vedantam, Ramakrishna and Parikh, Devi and Batra, Dhruv},\n  booktitle={ICCV},\n  year={2017}\n}",
        note=LAYER4_NOTE,
    ),
    "gradcam++": MethodInfo(
        "a gradient-based class activation map that weighs positive gradients by higher-order terms",
        "Like Grad-CAM, but each channel's weight sums only the positive gradients, each scaled by a coefficient from "
        "the second and third powers of the gradient (Eq. 19 of the paper), so several instances of a class can "
        "all light up.",
        "Aditya Chattopadhay, Anirban Sarkar, Prantik Howlader, Vineeth N Balasubramanian",
        "Grad-CAM++: Generalized Gradient-Based Visual Explanations for Deep Convolutional Networks (WACV 2018)",
        "https://arxiv.org/abs/1710.11063",
        "@inproceedings{chattopadhay2018gradcampp,\n  title={Grad-CAM++: Generalized Gradient-Based Visual "
        "Explanations for Deep Convolutional Networks},\n  author={Chattopadhay, Aditya and Sarkar, Anirban and "
        "Howlader, Prantik and Balasubramanian, Vineeth N},\n  booktitle={WACV},\n  year={2018}\n}",
    ),
    "hirescam": MethodInfo(
        "a gradient-based class activation map that keeps the gradient's spatial detail",
        "Multiplies the activations by the gradient element-wise instead of by its spatial mean, then sums over "
        "channels: Σ_k (∂y_c/∂A_k) ⊙ A_k, whose positive part the heatmap shows.",
        "Rachel Lea Draelos, Lawrence Carin",
        "Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional neural networks (2020)",
        "https://arxiv.org/abs/2011.08891",
        "@article{draelos2020hirescam,\n  title={Use HiResCAM instead of Grad-CAM for faithful explanations of "
        "convolutional neural networks},\n  author={Draelos, Rachel Lea and Carin, Lawrence},\n  journal={arXiv "
        "preprint arXiv:2011.08891},\n  year={2020}\n}",
        note=LAYER4_NOTE,
    ),
    "layercam": MethodInfo(
        "a gradient-based class activation map with position-wise positive gradients",
        "Weighs each activation by the positive part of its own gradient, Σ_k ReLU(∂y_c/∂A_k) ⊙ A_k: channels "
        "whose gradient is negative are left out rather than subtracted.",
        "Peng-Tao Jiang, Chang-Bin Zhang, Qibin Hou, Ming-Ming Cheng, Yunchao Wei",
        "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization (IEEE TIP 2021)",
        "https://doi.org/10.1109/TIP.2021.3089943",
        "@article{jiang2021layercam,\n  title={LayerCAM: Exploring Hierarchical Class Activation Maps for "
        "Localization},\n  author={Jiang, Peng-Tao and Zhang, Chang-Bin and Hou, Qibin and Cheng, Ming-Ming and Wei, "
        "Yunchao},\n  journal={IEEE Transactions on Image Processing},\n  volume={30},\n  pages={5875--5888},\n  "
        "year={2021}\n}",
    ),
    "xgradcam": MethodInfo(
        "a gradient-based class activation map whose channel weights follow two axioms (sensitivity, conservation)",
        "Weighs each channel by the sum of gradient × activation over the positions, divided by the channel's "
        "summed activation, then sums the weighted channels and keeps the positive part.",
        "Ruigang Fu, Qingyong Hu, Xiaohu Dong, Yulan Guo, Yinghui Gao, Biao Li",
        "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs (BMVC 2020)",
        "https://arxiv.org/abs/2008.02312",
        "@inproceedings{fu2020xgradcam,\n  title={Axiom-based Grad-CAM: Towards Accurate Visualization and "
        "Explanation of CNNs},\n  author={Fu, Ruigang and Hu, Qingyong and Dong, Xiaohu and Guo, Yulan and Gao, "
        "Yinghui and Li, Biao},\n  booktitle={BMVC},\n  year={2020}\n}",
        note=LAYER4_NOTE,
    ),
    "eigencam": MethodInfo(
        "a class-independent map: the first principal component of the chosen layer's activations",
        "Projects the (centred) activations at each position onto their first principal component (SVD over the "
        "positions) and keeps the positive part. No class, logit or gradient enters it: it shows the same map "
        "whatever class is asked for.",
        "Mohammed Bany Muhammad, Mohammed Yeasin",
        "Eigen-CAM: Class Activation Map using Principal Components (IJCNN 2020)",
        "https://arxiv.org/abs/2008.00299",
        "@inproceedings{muhammad2020eigencam,\n  title={Eigen-CAM: Class Activation Map using Principal "
        "Components},\n  author={Muhammad, Mohammed Bany and Yeasin, Mohammed},\n  booktitle={IJCNN},\n  "
        "year={2020}\n}",
        determinism="Deterministic, but the sign of a principal component is arbitrary: the positive part shown "
        "can be the background's side of the component.",
        class_specific=False,
    ),
    "scorecam": MethodInfo(
        "a gradient-free class activation map weighted by the class's score on masked inputs",
        "Upsamples each channel of the chosen layer to the input, normalises it to [0, 1], multiplies the image by "
        "it and runs the network on that masked copy; the channel's weight is the softmax over channels of the "
        "class's logit on its copy. One forward pass per channel (2,048 at layer4 of ResNet50).",
        "Haofan Wang, Zifan Wang, Mengnan Du, Fan Yang, Zijian Zhang, Sirui Ding, Piotr Mardziel, Xia Hu",
        "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks (CVPR Workshops 2020)",
        "https://arxiv.org/abs/1910.01279",
        "@inproceedings{wang2020scorecam,\n  title={Score-CAM: Score-Weighted Visual Explanations for Convolutional "
        "Neural Networks},\n  author={Wang, Haofan and Wang, Zifan and Du, Mengnan and Yang, Fan and Zhang, Zijian "
        "and Ding, Sirui and Mardziel, Piotr and Hu, Xia},\n  booktitle={CVPR Workshops},\n  year={2020}\n}",
    ),
}
