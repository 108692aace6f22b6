"""The AlexNet network, the paper's optimiser and schedule, and the trainer.

alexnet      the network (section 3): AlexNet, AlexNetConfig, the paper's LRN
optim        the paper's SGD rule and the plateau schedule (section 5)
config       TrainConfig: every training setting (light: no torch)
train        train_one_epoch, evaluate, fit (with resume), evaluate_checkpoint
loaders      which images each process reads, in what order, with which seed
distributed  devices, torchrun ranks, the stop flag
checkpoint   the checkpoint dict, its files, the network rebuilt from it
metrics      RUN/metrics.jsonl and RUN/curves.png
inference    load_trained: a trained run ready for evaluation, features, search; predict
"""

from alexnet.pipeline.lazy import lazy_exports

_EXPORTS = {
    "AlexNet": "alexnet",
    "AlexNetConfig": "alexnet",
    "PaperSGD": "optim",
    "PlateauSchedule": "optim",
    "TrainConfig": "config",
    "TrainedRun": "inference",
    "evaluate": "train",
    "evaluate_checkpoint": "train",
    "fit": "train",
    "load_trained": "inference",
    "predict": "inference",
    "train_one_epoch": "train",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
