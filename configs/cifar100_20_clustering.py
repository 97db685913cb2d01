"""CoKe clustering on CIFAR-100 with its 20 superclasses (supp. Sec. 2.4, Table 10: ACC 49.7).

  python main.py --config=configs/cifar100_20_clustering.py --workdir=/tmp/coke_cifar100

Same settings as configs/cifar10_clustering.py ("we have the same parameters
for different data sets"), with 10 heads of K = 20, 40, ..., 200; the K = 20
head is evaluated against the 20 superclass labels (the cifar100 source's
default label for evaluation).
"""

from configs import cifar10_clustering


def get_config():
  return cifar10_clustering.get_config(num_classes=20, dataset="cifar100")
