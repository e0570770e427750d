"""The `serving.disaggregation` block of a scenario (contract: its key names; docs/scenario.md), as pydantic models.

Prefill-decode (PD) disaggregation: separate prefill instances and decode instances, each prompt's KV cache moved
from the one to the other (DistServe, Zhong et al., OSDI '24; Splitwise, Patel et al., ISCA '24; SGLang
`--disaggregation-mode prefill|decode`; vLLM's disaggregated prefill with its NixlConnector; NVIDIA Dynamo). The
simulation is llmsim.serving.disaggregation; this module holds only the block, so that llmsim.serving.spec can
import it without an import cycle.

```yaml
serving:
  disaggregation:
    prefill: {replicas: 1, tp: 4}      # tp defaults to the strategy's
    decode:  {replicas: 1, tp: 4}
    kv_transfer: {link: ib-ndr400x8, layerwise: false}   # link: a catalog link (default: the scenario's
                                       # intra_node link when both pools fit one node, else inter_node)
```
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from llmsim.strict import StrictModel

PositiveInt = Annotated[int, Field(ge=1)]
# llmsim.hardware.CATALOG_LINK, spelled out: importing llmsim.hardware here would close an import cycle
# (hardware -> costmodel -> config -> serving.spec -> this module). `llmsim schema` lists the catalog's links there.
CATALOG_LINK: dict[str, str] = {"x-llmsim-catalog": "link"}


class DisaggPool(StrictModel):
    """One side of a disaggregated deployment: `replicas` instances of `tp` devices each."""

    replicas: PositiveInt = Field(1, description="instances of this side (each tp devices)")
    tp: PositiveInt | None = Field(None, description="tensor-parallel devices per instance; default the "
                                                     "strategy's tp")


class KVTransfer(StrictModel):
    """How a prompt's KV cache moves from its prefill instance to a decode instance."""

    link: str | None = Field(None, description="a catalog link (llmsim hardware lists them); default the "
                                               "scenario's intra_node link when both sides fit one node, else its "
                                               "inter_node link",
                                   json_schema_extra=CATALOG_LINK)
    layerwise: bool = Field(False, description="send each layer's KV as soon as the prefill has computed it "
                                               "(overlapped with the prefill): only the last layer's share is "
                                               "left after the prefill ends")


class Disaggregation(StrictModel):
    """Prefill instances and decode instances (serving.disaggregation; llmsim.serving.disaggregation)."""

    prefill: DisaggPool = Field(default_factory=DisaggPool, description="the prefill instances")
    decode: DisaggPool = Field(default_factory=DisaggPool, description="the decode instances")
    kv_transfer: KVTransfer = Field(default_factory=KVTransfer, description="the link the KV cache crosses")

    def tp_of(self, side: str, strategy_tp: int) -> int:
        """Devices per instance of `side` ('prefill' or 'decode'): its own tp, else the strategy's."""
        pool: DisaggPool = getattr(self, side)
        return pool.tp if pool.tp is not None else strategy_tp

    def devices(self, strategy_tp: int) -> int:
        """Every device of the deployment: prefill replicas x tp_p + decode replicas x tp_d (pp is 1)."""
        return (self.prefill.replicas * self.tp_of("prefill", strategy_tp)
                + self.decode.replicas * self.tp_of("decode", strategy_tp))
