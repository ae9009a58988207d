"""Distillation / model extraction: train a fresh student on the teacher's outputs (Hinton et al.,
"Distilling the Knowledge in a Neural Network", 2015; as a watermark-removal attack: Shafieinejad et al.,
"On the Robustness of Backdoor-based Watermarking in Deep Neural Networks", 2021).

Deviations: only the inputs of the attacker's data are used; their labels come from the teacher.
labels='hard' trains with cross-entropy on the teacher's argmax. labels='soft' adds to that Hinton's
temperature term T^2 * KL(softmax(teacher / T) || softmax(student / T)) through fit's `extra_loss`
(fit's own loss is the cross-entropy on the hard labels, which Hinton weights in as well, with the
teacher's labels standing in for the ground truth an extractor does not have). For regression and
generative teachers the student regresses the teacher's outputs (MSE). The student is built fresh from the
teacher's `modelseal_spec` (student='same') or from the zoo (another architecture); a teacher without a
spec is copied and every layer re-initialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .. import models, validate
from ..data import CLASSIFICATION, TensorData, as_tensors, meta_of
from ..models import reinit
from ..runtime import model_device
from ..schema import param
from ..train import fit, predict, task_of
from . import AttackError, register
from .training import OutputCapture, TrainingAttack

LABELS = ("soft", "hard")


@register("distill")
@dataclass
class Distill(TrainingAttack):
    """Train a fresh `student` ('same' or a zoo architecture) on the data's inputs labelled by the model."""

    student: str = param('same', "student architecture: same (the suspect's) or a zoo name")
    epochs: int = param(10, "distillation epochs", lo=0, hi=validate.MAX_EPOCHS)
    temperature: float = param(4.0, "softmax temperature of soft labels", lo=0, hi=1e6, lo_open=True)
    lr: float = param(0.001, "learning rate (Adam)", lo=0, hi=10, lo_open=True)
    labels: str = param('soft', "soft: the teacher's probabilities; hard: its top class only", choices=LABELS)

    def check(self) -> None:
        if self.student != "same" and self.student not in models.names():
            raise AttackError(f"unknown student architecture '{self.student}'; use 'same' or one of "
                              f"{', '.join(models.names())}")

    def build_student(self, teacher: nn.Module, input_shape: tuple[int, ...], output_size: int,
                      data: Dataset) -> nn.Module:
        spec = models.spec_of(teacher)
        meta = meta_of(data)
        bounds = tuple(spec["bounds"]) if spec and "bounds" in spec else getattr(meta, "bounds", None)
        if self.student == "same":
            if spec is None:
                student = self.copy_model(teacher)
                reinit(student, self.seed)
                return student
            name, kwargs = spec["name"], dict(spec.get("kwargs") or {})
            input_shape, output_size = tuple(spec["input_shape"]), int(spec["output_size"])
        else:
            name, kwargs = self.student, {}
        try:
            return models.build(name, input_shape=input_shape, num_classes=output_size, seed=self.seed,
                                bounds=bounds, **kwargs)
        except Exception as e:  # a zoo constructor may reject an input shape with a plain ValueError
            raise AttackError(f"cannot build a '{name}' student for inputs of shape {list(input_shape)} and "
                              f"{output_size} outputs ({e}); choose another student architecture") from None

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        data = self.attacker_data(data)
        x, y = as_tensors(data)
        self.used(queries=len(x))
        teacher = self.copy_model(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        t_out = predict(teacher, x)
        classify = task_of(data, y) == CLASSIFICATION and t_out.dim() == 2
        targets = t_out.argmax(1) if classify else t_out
        student = self.build_student(teacher, tuple(x.shape[1:]), int(t_out[0].numel()), data)
        student.to(model_device(teacher))
        extra, capture = None, None
        if classify and self.labels == "soft":
            temp = float(self.temperature)
            capture = student_out = OutputCapture(student)

            def extra(_m: nn.Module, xb: torch.Tensor, _yb: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    soft = F.softmax(teacher(xb.to(model_device(teacher))).float().to(xb.device) / temp, 1)
                log_p = F.log_softmax(student_out.out() / temp, 1)
                return F.kl_div(log_p, soft, reduction="batchmean") * temp * temp

        try:
            fit(student, TensorData(x, targets), **self.fit_kwargs("attack distill", extra_loss=extra))
        finally:
            if capture is not None:
                capture.remove()
        return student
