"""deploy/: the Kubernetes and KServe manifests, validated offline as a cluster would read them.

Kubernetes objects are checked against the Kubernetes OpenAPI schemas that `kubernetes-validate`
ships (strict: unknown fields are errors, as `kubectl apply --validate=strict` makes them), for
the oldest release they claim and the newest; KServe's custom resources against the
openAPIV3Schema of KServe's own CRDs (tests/ops/schemas/kserve, see its README), closed in the
same strict way. Then what only this project knows: every container's arguments are a valid
`cnnzoo` command line, and ports, probes, selectors and grace periods agree with each other.
"""

from __future__ import annotations

import copy
import gzip
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cnnzoo.cli import build_parser
from tests.ops.stack import ROOT

DEPLOY = ROOT / "deploy"
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
KSERVE_SCHEMAS = Path(__file__).resolve().parent / "schemas" / "kserve"
# gRPC probes are GA since 1.27; 1.30 is the oldest release the manifests are checked against.
KUBERNETES_RELEASES = ("1.30.0", kubernetes_validate.latest_version())
CRDS = {
    "ClusterServingRuntime": ("serving.kserve.io_clusterservingruntimes.yaml.gz", "v1alpha1"),
    "InferenceService": ("serving.kserve.io_inferenceservices.yaml.gz", "v1beta1"),
}


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> dict[str, dict]:
    return {doc["kind"]: doc for path in K8S_FILES for doc in documents(path)}


def kserve_object(kind: str) -> dict:
    name = {
        "ClusterServingRuntime": "clusterservingruntime",
        "InferenceService": "inferenceservice",
    }
    (doc,) = documents(DEPLOY / "kserve" / f"{name[kind]}.yaml")
    assert doc["kind"] == kind
    return doc


def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    file, version = CRDS[kind]
    crd = yaml.load(gzip.decompress((KSERVE_SCHEMAS / file).read_bytes()), Loader=yaml.CSafeLoader)
    assert crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(_closed(served["schema"]["openAPIV3Schema"]))


def _closed(schema: dict) -> dict:
    """A structural schema with unknown fields refused (the API server's strict validation)."""
    schema = copy.deepcopy(schema)
    stack = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            if isinstance(value, dict):
                stack.append(value)
            elif isinstance(value, list):
                stack.extend(value)
    return schema


def test_the_manifests_are_where_the_readme_says():
    assert {p.name for p in K8S_FILES} == {"deployment.yaml", "service.yaml", "hpa.yaml"}
    assert set(k8s_objects()) == {"Deployment", "Service", "HorizontalPodAutoscaler"}


@pytest.mark.parametrize("release", KUBERNETES_RELEASES)
def test_kubernetes_objects_follow_the_openapi_schemas(release: str):
    for kind, doc in k8s_objects().items():
        try:
            kubernetes_validate.validate(doc, release, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(
                f"{kind} is not valid for Kubernetes {release}: {err.message} at {list(err.path)}"
            )
    broken = copy.deepcopy(k8s_objects()["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 8001
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, release, strict=True)


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_kserve_resources_follow_kserves_crd_schemas(kind: str):
    validator = crd_validator(kind)
    doc = kserve_object(kind)
    errors = sorted(validator.iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    typo = copy.deepcopy(doc)
    typo["spec"]["protocolVersion" if kind == "ClusterServingRuntime" else "predictor"] = {"x": 1}
    assert list(validator.iter_errors(typo)), "the schema must be able to refuse a resource"


def serve_arguments(args: list[str]):
    """The container's arguments as `cnnzoo` (the image's ENTRYPOINT) parses them."""
    parsed = build_parser().parse_args(args)
    assert parsed.command == args[0]
    return parsed


def test_the_deployment_runs_valid_cnnzoo_commands_with_matching_ports_and_probes():
    objects = k8s_objects()
    pod = objects["Deployment"]["spec"]["template"]
    (init,) = pod["spec"]["initContainers"]
    export = serve_arguments(init["args"])
    assert export.command == "export" and export.all and str(export.repository) == "/models"
    (server,) = pod["spec"]["containers"]
    serve = serve_arguments(server["args"])
    assert serve.command == "serve" and str(serve.repository) == "/models"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": serve.port, "http": serve.http_port, "metrics": serve.metrics_port}
    assert serve.shared_memory == "off"  # no client in another pod shares /dev/shm
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == serve.port, probe
    # the liveness service is one the server registers with grpc.health.v1
    assert server["livenessProbe"]["grpc"]["service"] == "inference.GRPCInferenceService"
    assert pod["spec"]["terminationGracePeriodSeconds"] > serve.grace_seconds
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(serve.metrics_port)
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"]

    service = objects["Service"]["spec"]
    labels = pod["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["selector"].items())
    assert {p["targetPort"] for p in service["ports"]} == set(ports)
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        objects["Deployment"]["metadata"]["name"],
    )


def test_the_kserve_runtime_serves_the_storage_initializers_folder_over_grpc_v2():
    runtime = kserve_object("ClusterServingRuntime")
    (container,) = runtime["spec"]["containers"]
    serve = serve_arguments(container["args"])
    assert str(serve.repository) == "/mnt/models"  # where KServe puts storageUri's files
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2", "v2"]
    assert serve.http_port == 8080 and serve.shared_memory == "off"  # KServe's REST port
    (port,) = container["ports"]  # the default; a REST InferenceService names http1 8080
    assert (port["name"], port["containerPort"]) == ("h2c", serve.port)
    assert container["readinessProbe"]["grpc"]["port"] == serve.port
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(serve.metrics_port)

    service = kserve_object("InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "grpc-v2"
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model["storageUri"].endswith("model_repository")
    assert model["ports"] == container["ports"]
