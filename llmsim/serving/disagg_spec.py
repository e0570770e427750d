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
    decode:  {replicas: 1, tp: 4, ep: 4, etp: 1, attention_dp: 4}   # a mixture of experts' layout per side;
                                       # ep, etp, attention_dp default to the strategy's
    kv_transfer: {link: ib-ndr400x8, layerwise: false}   # link: a catalog link (default: the scenario's
                                       # intra_node link when both pools fit one node, else inter_node)
```
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, Field

from llmsim.strict import Count, StrictModel

# llmsim.config.Strategy, not named: importing it, even for type checking only, would close an import cycle
# (config -> serving.spec -> this module -> config)
StrategyT = TypeVar("StrategyT", bound=BaseModel)

# llmsim.hardware.CATALOG_LINK, spelled out: importing llmsim.hardware here would close an import cycle
# (hardware -> costmodel -> config -> serving.spec -> this module). `llmsim schema` lists the catalog's links there.
CATALOG_LINK: dict[str, str] = {"x-llmsim-catalog": "link"}


# The keys of a side that override the strategy's (DisaggPool; Disaggregation.side_strategy).
SIDE_STRATEGY_KEYS = ("tp", "ep", "etp", "attention_dp")


class DisaggPool(StrictModel):
    """One side of a disaggregated deployment: `replicas` instances of `tp` devices each, a mixture of experts'
    experts and attention laid out over them by `ep`, `etp` and `attention_dp` (the strategy keys of the same names,
    docs/scenario.md), each defaulting to the strategy's. Real deployments give the sides different layouts:
    DeepSeek-V3's inference system runs prefill at EP32 and decode at EP144 with DP attention (DeepSeek, "Day 6:
    One More Thing, DeepSeek-V3/R1 Inference System Overview", 2025); SGLang's PD examples run a tp 8 prefill
    side and a decode side with --enable-dp-attention and expert parallelism."""

    replicas: Count = Field(1, description="instances of this side (each tp devices)")
    tp: Count | None = Field(None, description="tensor-parallel devices per instance; default the "
                                               "strategy's tp")
    ep: Count | None = Field(None, description="expert parallelism of this side's instances (the strategy "
                                               "key ep: whole experts spread over ep of its tp ranks); "
                                               "default the strategy's ep; MoE models only")
    etp: Count | None = Field(None, description="expert tensor parallelism of this side's instances (the "
                                                "strategy key etp); default the strategy's etp (unset there: "
                                                "this side's tp); MoE models only")
    attention_dp: Count | None = Field(None, description="attention data parallelism of this side's "
                                                         "instances (the strategy key attention_dp: "
                                                         "attention_dp ranks of tp / attention_dp devices, "
                                                         "each with its own requests and KV cache); default "
                                                         "the strategy's; MoE models only")


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

    def side_strategy(self, side: str, strategy: StrategyT) -> StrategyT:
        """The strategy an instance of `side` runs: the scenario strategy with the side's own tp, ep, etp and
        attention_dp where it sets them (SIDE_STRATEGY_KEYS); the strategy itself when it sets none."""
        pool: DisaggPool = getattr(self, side)
        update = {key: getattr(pool, key) for key in SIDE_STRATEGY_KEYS if getattr(pool, key) is not None}
        return strategy.model_copy(update=update) if update else strategy

    def sets_layout(self, side: str) -> bool:
        """Whether `side` sets an expert or attention layout of its own (ep, etp or attention_dp)."""
        pool: DisaggPool = getattr(self, side)
        return any(getattr(pool, key) is not None for key in SIDE_STRATEGY_KEYS[1:])

    def devices(self, strategy_tp: int) -> int:
        """Every device of the deployment: prefill replicas x tp_p + decode replicas x tp_d (pp is 1)."""
        return (self.prefill.replicas * self.tp_of("prefill", strategy_tp)
                + self.decode.replicas * self.tp_of("decode", strategy_tp))
