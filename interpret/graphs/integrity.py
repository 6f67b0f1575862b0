"""Is an explanation model still the explanation of its classifier? The graph embeds a copy of
the classifier's weights, so a classifier replaced under the same name and version (or a
damaged file) would be explained with the old weights: the explanation model records the sha256
of the classifier's model.onnx it was built from, and `check_classifier` compares it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import onnx

from cnnzoo.errors import IntegrityError, InvalidInput

__all__ = ["check_classifier", "explanation_facts"]


def explanation_facts(explanation: onnx.ModelProto | Mapping[str, str]) -> dict[str, str]:
    """The metadata of an explanation model (`cnnzoo_explanation`, `explains`,
    `classifier_sha256`, `layers`, ...), from the model or from its metadata as ONNX Runtime
    returns it (`session.get_modelmeta().custom_metadata_map`).

    Raises:
        InvalidInput: the model is not an explanation model.
    """
    if isinstance(explanation, onnx.ModelProto):
        facts = {entry.key: entry.value for entry in explanation.metadata_props}
    else:
        facts = dict(explanation)
    if "cnnzoo_explanation" not in facts or "classifier_sha256" not in facts:
        raise InvalidInput("not an explanation model: its metadata has no cnnzoo_explanation")
    return facts


def check_classifier(
    explanation: onnx.ModelProto | Mapping[str, str], classifier: bytes | str
) -> None:
    """Refuse an explanation model built from another classifier than `classifier`.

    Args:
        explanation: the explanation model, or its metadata.
        classifier: the classifier's model.onnx bytes, or their sha256 (hex).

    Raises:
        IntegrityError: the sha256 differs (the message says which model to rebuild).
        InvalidInput: `explanation` is not an explanation model.
    """
    facts = explanation_facts(explanation)
    actual = hashlib.sha256(classifier).hexdigest() if isinstance(classifier, bytes) else classifier
    recorded = facts["classifier_sha256"]
    if actual.lower() != recorded.lower():
        name = facts.get("explains") or "its classifier"
        raise IntegrityError(
            f"the {facts['cnnzoo_explanation']} explanation model was built from {name} with "
            f"sha256 {recorded[:12]}..., but that classifier's model.onnx now has sha256 "
            f"{actual[:12]}...; rebuild it (cnnzoo explain-export)"
        )
