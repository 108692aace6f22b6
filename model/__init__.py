"""The AlexNet network, the paper's optimiser and schedule, and the trainer."""
