from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "version", "images", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    top_k: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., top_k: _Optional[int] = ...) -> None: ...

class ClassPrediction(_message.Message):
    __slots__ = ("index", "label", "probability")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    probability: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class ImageClassification(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[ClassPrediction]
    def __init__(self, predictions: _Optional[_Iterable[_Union[ClassPrediction, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "version", "results")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    results: _containers.RepeatedCompositeFieldContainer[ImageClassification]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ImageClassification, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "version", "versions", "ready", "state", "reason", "zoo_entry", "dataset", "num_classes", "input_shape", "execution_provider", "max_batch_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ZOO_ENTRY_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    ready: bool
    state: str
    reason: str
    zoo_entry: str
    dataset: str
    num_classes: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    execution_provider: str
    max_batch_size: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., ready: _Optional[bool] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., zoo_entry: _Optional[str] = ..., dataset: _Optional[str] = ..., num_classes: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., execution_provider: _Optional[str] = ..., max_batch_size: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "version", "image", "method", "target", "layer", "quality", "channel", "position")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    image: bytes
    method: str
    target: int
    layer: str
    quality: bool
    channel: int
    position: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., image: _Optional[bytes] = ..., method: _Optional[str] = ..., target: _Optional[int] = ..., layer: _Optional[str] = ..., quality: _Optional[bool] = ..., channel: _Optional[int] = ..., position: _Optional[_Iterable[int]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "version", "method", "target", "label", "score", "png", "shape", "attribution", "warnings", "quality", "unit_position", "unit_activation")
    class QualityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_POSITION_FIELD_NUMBER: _ClassVar[int]
    UNIT_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    method: str
    target: int
    label: str
    score: float
    png: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    attribution: _containers.RepeatedScalarFieldContainer[float]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    quality: _containers.ScalarMap[str, float]
    unit_position: _containers.RepeatedScalarFieldContainer[int]
    unit_activation: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., method: _Optional[str] = ..., target: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., png: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., attribution: _Optional[_Iterable[float]] = ..., warnings: _Optional[_Iterable[str]] = ..., quality: _Optional[_Mapping[str, float]] = ..., unit_position: _Optional[_Iterable[int]] = ..., unit_activation: _Optional[float] = ...) -> None: ...
