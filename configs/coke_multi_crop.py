"""CoKe with multi-crop on ImageNet: 2 x 224 + 6 x 96 views (supp. Sec. 2.1; Table 8's CoKe).

  python main.py --config=configs/coke_multi_crop.py --workdir=gs://bucket/coke_multi_crop \
      --config.dataset.data_dir=gs://bucket/tensorflow_datasets

The small crops are trained against the large views' labels and never enter
the assignment (official main_multi_view.py); beta weighs the large-view loss
against the small-crop loss there.
"""

from configs import coke_two_view


def get_config():
  c = coke_two_view.get_config()
  c.num_views = 2                            # supp. 2.1: two 224 x 224 crops
  c.num_small_views = 6                      # supp. 2.1: six 96 x 96 crops
  c.augment.small_image_size = 96            # supp. 2.1
  c.augment.small_crop_scale = (0.05, 0.6)   # official main_multi_view.py
  c.num_epochs = 800                         # supp. 2.1: "the training epoch for CoKe with multi-view is 800"
  c.checkpoint_every_steps = 2500
  return c
