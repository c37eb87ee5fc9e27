"""Linear probe: multinomial logistic regression on frozen features, the CLIP paper's protocol.

The L2 strength is swept over a log grid; each value is fitted full-batch with L-BFGS on the
training part and scored on the validation part; the best is refitted on training + validation.
Without a validation part there is nothing to choose on: the strength given (``l2``) is used, else
``NO_VALIDATION_L2`` with a warning, and the run records which (``fit.l2_source``) — never a strength
picked by a tie of empty scores. A given ``l2`` (≥ 0) is used as is, without the sweep.
Weights start at zero (the problem is convex), so the seed changes the validation part carved
from train, not the initial weights.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from emoclip.encoder.backbone import Backbone
from emoclip.labels.taxonomy import Taxonomy
from emoclip.methods.base import Method, register_method
from emoclip.schema.methods import LinearProbeConfig  # options, ranges and help: the method's card

log = logging.getLogger("emoclip")
# The strength used when there is no validation part to choose on: the middle (log scale) of the default
# grid, a moderate penalty for unit-length features. Said in a warning and recorded; never silent.
NO_VALIDATION_L2 = 1e-3


@register_method("linear-probe")
class LinearProbe(Method):
    Config = LinearProbeConfig
    config: LinearProbeConfig

    def __init__(self, backbone: Backbone, taxonomy: Taxonomy, config: LinearProbeConfig) -> None:
        super().__init__(backbone, taxonomy, config)
        self.linear = nn.Linear(backbone.feature_dim, len(taxonomy))
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.float())

    def _fit(self, x: torch.Tensor, y: torch.Tensor, l2: float) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        optimizer = torch.optim.LBFGS(self.linear.parameters(), max_iter=self.config.max_iter,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(self.linear(x), y) + l2 * self.linear.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)

    def fit_direct(self, train, val) -> dict:
        x, y = train[0].float(), train[1]
        vx, vy = val[0].float(), val[1]
        if y.ndim == 2:  # vote distributions: soft cross-entropy; the validation labels join as one-hot rows
            y = y.float()
            refit_vy = F.one_hot(vy, y.shape[1]).float() if vy.ndim == 1 else vy.float()
            vy = vy if vy.ndim == 1 else vy.argmax(1)
        else:
            refit_vy = vy
        if self.config.l2 >= 0:  # given: no sweep, trained on everything there is
            self._fit(torch.cat([x, vx]), torch.cat([y, refit_vy]), self.config.l2)
            return {"l2": self.config.l2, "l2_source": "given"}
        if not len(vy):
            log.warning("linear probe: no validation images to choose the L2 strength on; using %g (give "
                        "--val-fraction above 0 to choose it, or --set l2=VALUE)", NO_VALIDATION_L2)
            self.config.l2 = NO_VALIDATION_L2
            self._fit(x, y, NO_VALIDATION_L2)
            return {"l2": NO_VALIDATION_L2, "l2_source": "default: no validation images to choose on"}
        scores = {}
        for l2 in self.config.l2_grid:
            self._fit(x, y, l2)
            with torch.no_grad():
                scores[l2] = (self.linear(vx).argmax(1) == vy).float().mean().item()
        best = max(self.config.l2_grid, key=lambda v: (scores[v], v))  # ties → stronger regularisation
        self.config.l2 = best
        self._fit(torch.cat([x, vx]), torch.cat([y, refit_vy]), best)
        # val_accuracy is the selection score (the refit has seen the validation part)
        return {"l2": best, "val_accuracy": scores[best], "val_accuracy_by_l2": {str(k): v for k, v in scores.items()}}
