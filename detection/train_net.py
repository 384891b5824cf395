"""Fine-tune and test Faster R-CNN R50-C4 on PASCAL VOC with detectron2 (the paper's Table 7).

    python convert_detectron2.py runs/in_cld/last.pth backbone.pkl      # prints the two lines below
    python detection/train_net.py --config-file detection/configs/voc0712_R_50_C4_24k.yaml \
        --num-gpus 8 MODEL.WEIGHTS backbone.pkl
    python detection/train_net.py --config-file detection/configs/voc07_R_50_C4_9k.yaml \
        --num-gpus 8 MODEL.WEIGHTS backbone.pkl

detectron2 is not a requirement of this project: install it (and the VOC2007/VOC2012 folders under
$DETECTRON2_DATASETS, default ./datasets) on the machine that runs the detector. The flags are
detectron2's own (default_argument_parser: --config-file, --num-gpus, --resume, --eval-only, KEY VALUE
overrides). What this script adds to detectron2's tools/train_net.py is what MoCo's
detection/train_net.py (github.com/facebookresearch/moco) adds: the ROI head Res5ROIHeadsExtraNorm the
configs name, and the VOC evaluator (AP50, and the COCO-style AP and AP75 over IoU 0.5:0.95).
"""
import os
import sys

try:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
except ImportError as e:
    sys.exit(f"error: detection/train_net.py runs detectron2, which is not installed here ({e}); install it "
             "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html) on the machine with the GPUs; "
             "convert_detectron2.py itself needs only this project's requirements")


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """detectron2's C4 head (res5 on each pooled region) followed by one more normalisation layer of the
    kind cfg.MODEL.RESNETS.NORM names, as in MoCo's detection/train_net.py. The layer is the module
    "norm" of res5 (state-dict keys roi_heads.res5.norm.*, as MoCo's), and it starts at weight 1, bias 0:
    the converted backbone holds no such layer."""

    @classmethod
    def _build_res5_block(cls, cfg):
        res5, channels = super()._build_res5_block(cfg)
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, channels))
        return res5, channels


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if not dataset_name.startswith("voc_"):
            raise ValueError(f"these configs test on PASCAL VOC; {dataset_name} is not one of detectron2's VOC sets")
        return PascalVOCDetectionEvaluator(dataset_name)


def setup(args):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    if not os.path.isfile(args.config_file):
        sys.exit(f"error: --config-file {args.config_file!r} is not a file; pass one of detection/configs/*.yaml")
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
