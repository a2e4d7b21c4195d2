"""Training: datasets over Rexverse-style records, the three-stage recipe, and the UPN trainer."""
