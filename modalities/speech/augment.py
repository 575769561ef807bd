"""Training-time speech augmentation with torchaudio: speed perturbation, noise, SpecAugment.

Every draw uses torch's global generator, which the trainer core seeds for each batch from
(seed, epoch, batch, rank) while it collates (trainers/batches.py): a batch is augmented the
same whether the loop or a data worker collates it, and a resumed run augments the remaining
steps as the uninterrupted one would have.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from omnitune.modalities.speech.options import AugmentOptions


class Augmenter:
    def __init__(self, options: AugmentOptions, sampling_rate: int) -> None:
        import torchaudio.transforms as T

        self.options = options
        self.rate = sampling_rate
        spec = options.spec_augment
        # iid_masks: each example in the batch gets its own masks.
        self._freq_mask = T.FrequencyMasking(spec.freq_width, iid_masks=True)
        self._time_mask = T.TimeMasking(spec.time_width, iid_masks=True)
        self._pending: tuple[bool, bool] = (False, False)

    def draws_waveform_change(self) -> bool:
        """Draw whether the next example gets noise and/or a speed change (remembered for
        `waveform()`); False means the cached features can be used as they are."""
        if not self.options.changes_waveform:
            return False
        self._pending = (_chance(self.options.speed.p), _chance(self.options.noise.p))
        return any(self._pending)

    def waveform(self, samples: np.ndarray) -> np.ndarray:
        import torch
        import torchaudio.functional as F

        speed, noise = self._pending
        audio = torch.from_numpy(samples).unsqueeze(0)
        if speed:
            factors = self.options.speed.factors
            factor = factors[int(torch.randint(len(factors), ()).item())]
            audio, _ = F.speed(audio, self.rate, factor)
        if noise:
            low, high = self.options.noise.snr_db
            snr = torch.tensor([low + (high - low) * float(torch.rand(()))])
            audio = F.add_noise(audio, torch.randn_like(audio), snr)
        return audio.squeeze(0).numpy().astype(np.float32)

    def spectrogram(self, features: Any) -> Any:
        """SpecAugment on a [batch, mels, frames] tensor, for a `spec_augment.p` share of rows."""
        import torch

        spec = self.options.spec_augment
        if spec.p <= 0:
            return features
        chosen = torch.rand(features.shape[0]) < spec.p
        if not bool(chosen.any()):
            return features
        masked = features[chosen].clone()
        floor = masked.amin(dim=(1, 2), keepdim=True)  # the clip's silence level, not zero
        for _ in range(spec.freq_masks):
            masked = self._fill(self._freq_mask, masked, floor)
        for _ in range(spec.time_masks):
            masked = self._fill(self._time_mask, masked, floor)
        features = features.clone()
        features[chosen] = masked
        return features

    @staticmethod
    def _fill(mask: Any, features: Any, floor: Any) -> Any:
        # torchaudio masks with a constant; mark with NaN, then put each clip's floor there.
        marked = mask(features, mask_value=float("nan"))
        return marked.where(~marked.isnan(), floor.expand_as(marked))


def _chance(p: float) -> bool:
    import torch

    return p > 0 and float(torch.rand(())) < p
