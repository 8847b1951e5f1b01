"""The protections the paper attacks: RMU and NPO (unlearning) and DPO refusal training."""
