"""Evaluation: localization metrics, paired statistics, photo framing, faithfulness, and `eval` on stamp scenes or
photo folders."""
