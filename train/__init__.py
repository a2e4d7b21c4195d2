"""Training code for ChatRex: datasets, collators, freeze policy, trainers (``train.upn`` trains UPN)."""
