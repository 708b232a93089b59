import dataclasses

import pytest

from tests.train.conftest import write_tiny_imagenet
from verydeep.reproduce.profiles import MINI

# The mini profile's chain and image proportions on nets small enough for a few steps each.
TINY = dataclasses.replace(
    MINI, name="tiny", crop_size=32, dataset=None, eval_batch_size=8, departures=(), holdout=0,
    overrides=("model.width=0.0625", "model.fc_features=16", "model.dropout=0.0", "model.init=glorot",
               "train.batch_size=6", "train.epochs=2", "train.max_iterations=null", "train.device=cpu",
               "train.tensorboard=false", "train.plot=false", "train.log_every=1", "data.workers=0"),
)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny_data"), train_per_class=4, val_per_class=2)
