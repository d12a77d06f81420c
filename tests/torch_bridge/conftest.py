from __future__ import annotations

import numpy as np
import pytest

from tests.torch_bridge.clinic import clinic_frames, clinic_metadata, design_matrix


@pytest.fixture(scope="module")
def clinic_gateway(tmp_path_factory):
    from sqlgate.gateway import Gateway

    gw = Gateway(tmp_path_factory.mktemp("clinic"))
    gw.add_dataset(clinic_metadata(), clinic_frames(4000, seed=1))
    yield gw
    gw.close()


@pytest.fixture(scope="module")
def holdout():
    frame = clinic_frames(2000, seed=99)["patients"]
    y = frame["at_risk"].to_numpy().astype(int)
    return design_matrix(frame), y, max(y.mean(), 1 - y.mean())


def accuracy(tensors: dict, spec, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    from torch_bridge.models import build_model

    model = build_model(spec.model, x.shape[1], 1)
    model.load_state_dict(tensors)
    with torch.no_grad():
        predicted = (model(torch.from_numpy(x)).reshape(-1) > 0).numpy().astype(int)
    return float((predicted == y).mean())
