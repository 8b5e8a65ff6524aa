"""experiment=imagecasx_finetune: the published fine-tune's recipe on the ImageCAS-X set."""

from __future__ import annotations

from omegaconf import OmegaConf


def test_imagecasx_finetune_is_the_published_recipe_on_imagecasx(compose_cfg):
    x = OmegaConf.to_container(
        compose_cfg("train", ["experiment=imagecasx_finetune"]), resolve=True
    )
    base = OmegaConf.to_container(
        compose_cfg("train", ["experiment=imagecas_finetune"]), resolve=True
    )
    assert x["task_name"] == "imagecasx_finetune" and x["tags"] == ["imagecasx", "finetune"]
    assert x["data"]["data_dir"].endswith("/data/imagecasx")
    assert base["data"]["data_dir"].endswith("/data/imagecas")
    # everything else is the published fine-tune: model, loss, optimiser, schedule, trainer
    for key in ("model", "loss", "optimizer", "scheduler", "trainer", "inference", "callbacks"):
        assert x[key] == base[key], key
    assert {k: v for k, v in x["data"].items() if k != "data_dir"} == {
        k: v for k, v in base["data"].items() if k != "data_dir"
    }
    assert x["trainer"]["precision"] == "16-mixed" and x["inference"]["threshold"] == 0.62
