"""LKDN for spandrel, the model loader of chaiNNer and ComfyUI: `import integrations.spandrel_arch` registers it.

    import spandrel
    import integrations.spandrel_arch  # noqa: F401 (adds LKDN to spandrel.MAIN_REGISTRY)
    model = spandrel.ModelLoader().load_from_file("model_zoo/team01_LKDN.pth")  # an ImageModelDescriptor

spandrel reads a file's tensors (unwrapping BasicSR's params_ema / params) and asks each registered architecture
whether it recognises the keys. LKDN recognises every form this repository loads (LKDN-S and LKDN x2/x3/x4, the
training and the fused form, the ablation variants, the authors' files and this repository's) with the same
exact identification the repository's own loader uses for files that declare no network
(`models.config_from_state_dict`), and hands spandrel the fused network, whose output equals the training form's
within float rounding. Size rules: ESA attention needs 15 pixels a side; LKA networks tile exactly (their
receptive field is local), ESA networks do not (ESA pools over the whole image).
"""

from __future__ import annotations

from collections.abc import Mapping

import spandrel
from spandrel import (
    MAIN_REGISTRY,
    Architecture,
    ArchRegistry,
    ArchSupport,
    ImageModelDescriptor,
    ModelTiling,
    SizeRequirements,
)
from torch import Tensor

from models import LKDN, config_from_state_dict, fuse_model

ARCH_ID = "LKDN"


def _identity(state_dict: Mapping[str, Tensor]) -> dict | None:
    try:
        return config_from_state_dict(state_dict)
    except (KeyError, ValueError):  # not an LKDN (or none this repository knows)
        return None


class LKDNArch(Architecture[LKDN]):
    """spandrel's description of LKDN: detection by the keys, loading into the fused network."""

    def __init__(self) -> None:
        super().__init__(id=ARCH_ID, detect=lambda state_dict: _identity(state_dict) is not None)

    def load(self, state_dict: spandrel.StateDict) -> ImageModelDescriptor[LKDN]:
        config = _identity(state_dict)
        if config is None:
            raise ValueError("not an LKDN state dict")
        model = LKDN.from_config(config)
        model.load_state_dict(state_dict)
        fused = model if model.fused else fuse_model(model)
        local = fused.receptive_radius() is not None
        return ImageModelDescriptor(
            fused.eval(),
            fused.state_dict(),  # the descriptor loads it into the model it is given: the fused form's
            architecture=self,
            purpose="SR",
            tags=[f"{fused.num_feat}nf", f"{fused.num_blocks}nb", config["attention"], config["shallow"]],
            supports_half=False,  # float16 is not tested here (LayerNorm and the attention's products)
            supports_bfloat16=True,
            scale=fused.scale,
            input_channels=fused.in_ch,
            output_channels=fused.out_ch,
            size_requirements=SizeRequirements(minimum=fused.min_input_size()),
            tiling=ModelTiling.SUPPORTED if local else ModelTiling.DISCOURAGED,
        )


def register(registry: ArchRegistry = MAIN_REGISTRY) -> None:
    """Add LKDN to `registry` (spandrel's main one by default); a second call changes nothing."""
    registry.add(ArchSupport.from_architecture(LKDNArch()), ignore_duplicates=True)


register()
