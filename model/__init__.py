"""The AlexNet network, the paper's optimiser and schedule, and the trainer.

alexnet      the network (section 3): AlexNet, the paper's LRN
optim        the paper's SGD rule, parameter groups, rate scaling and warm-up (section 5)
plateau      when the rate drops 10x: the noise-aware rule and the paper's
config       TrainConfig: every training setting, the network's (AlexNetConfig) among them
             (light: no torch)
train        train_one_epoch, fit (with resume): the training loop
evaluate     evaluate (top-1/top-5, ten-crop), evaluate_checkpoint (`alexnet eval`)
loaders      which images each process reads, in what order, with which seed
distributed  devices, torchrun ranks, the stop flag
checkpoint   the checkpoint dict, its files and checksums, the network rebuilt from it
reference    import_weights: a run from published weights, read by caffe_net (Caffe) and
             onnx_io (ONNX) and checked against reference_spec (AlexNet's shapes)
metrics      RUN/metrics.jsonl and RUN/curves.png
inference    load: a trained run ready for use (.predict, .features, .classes, .net);
             load_trained, the same with the checks evaluation and retrieval ask for
"""

from alexnet.pipeline.lazy import lazy_exports

_EXPORTS = {
    "AlexNet": "alexnet",
    "AlexNetConfig": "config",
    "PaperSGD": "optim",
    "NoisePlateau": "plateau",
    "PaperPlateau": "plateau",
    "TrainConfig": "config",
    "TrainedRun": "inference",
    "evaluate": "evaluate",
    "evaluate_checkpoint": "evaluate",
    "fit": "train",
    "load_trained": "inference",
    "load": "inference",
    "train_one_epoch": "train",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
