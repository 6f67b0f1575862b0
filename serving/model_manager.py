"""The models a server holds: which version of each serves, lookup, model control, hot reload.

Each model in the repository is served at its newest version that loads, and, where its
config.pbtxt's `version_policy` asks for more (`cnnzoo.serving.version_policy`), at the older
versions the policy names too (`ModelRecord.older`). A version loads in a
worker thread (`cnnzoo.serving.version`: integrity checks, config.pbtxt and labels, the ONNX
Runtime session, warm-up); only then does it replace the one being served. Versions are tried
newest first: a refused one is logged with its
reason and the next older one is tried. A model none of whose versions loads is marked
unavailable with the reasons (requests for it get UNAVAILABLE naming it) while the others serve.
A refusal is remembered with the size and modification time of the files it depended on, so a
version that was still being copied in (manifest before model.onnx) is tried again on the next
poll once its files change, and an unchanged one is not reloaded over and over.

Model control follows Triton's `--model-control-mode`: `none` loads every model at start-up and
never looks again; `poll` also looks for new models and versions every `--poll-seconds`;
`explicit` loads only the models named at start-up (`--load-model`, `*` for all) and then
whatever a client asks for with `load` / `unload` (RepositoryModelLoad / RepositoryModelUnload).
A `load` of a model already served reads the repository again and replaces the served version
with the newest one that loads; an `unload` retires the served version (its queued requests
finish) and leaves the model UNAVAILABLE with the reason "unloaded".

Hot reload (`poll`): a newer version directory is loaded beside the current one, swapped in with
one assignment on the event loop, and the old version's batcher then finishes what it had
queued before it is closed, so no request is dropped or failed by the switch. A poll also
watches the served version: when its folder is removed, the newest remaining version that loads
takes over (as Triton does), or, when there is none, the copy in memory keeps serving and
ListModels says so; when its files change on disk, their sha256 is checked again and a mismatch
is logged and reported in ListModels (the verified copy in memory keeps serving; a restart
would refuse the version).

A folder the server cannot read (permissions, I/O errors) makes that model or version
unavailable with the reason, like any other refusal; the other models load and poll as usual.
Reasons reach clients (ListModels, UNAVAILABLE messages), so they name files relative to the
repository, never the server's own paths.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import KeysView, Sequence
from dataclasses import dataclass, field

from cnnzoo.errors import (
    CnnzooError,
    ExecutionProviderError,
    InvalidInput,
    NotFound,
    Unavailable,
    quoted,
)
from cnnzoo.serving.latency import MetricsConfig
from cnnzoo.serving.limits import RequestLimits
from cnnzoo.serving.runtime import RuntimeOptions
from cnnzoo.serving.stats import ModelStats
from cnnzoo.serving.types import IndexEntry
from cnnzoo.serving.version import (
    Fingerprint,
    LoadedVersion,
    LoadOptions,
    VersionLoader,
    fingerprint,
)
from cnnzoo.serving.version_policy import VersionPolicy
from cnnzoo.zoo.repository import ModelRepository

__all__ = [
    "CONTROL_MODES",
    "EXPLICIT",
    "ModelManager",
    "ModelRecord",
    "NONE",
    "POLL",
]

log = logging.getLogger(__name__)

READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
UNLOADED = "unloaded"  # Triton's reason for a model unloaded on request

NONE, POLL, EXPLICIT = "none", "poll", "explicit"
CONTROL_MODES = (NONE, POLL, EXPLICIT)


@dataclass(frozen=True)
class Refusal:
    """Why a version would not load, and the state of its files when it was tried."""

    fingerprint: Fingerprint
    reason: str


@dataclass(eq=False)
class ModelRecord:
    """A model name and what the server knows about it."""

    name: str
    state: str = LOADING
    reason: str = ""
    current: LoadedVersion | None = None  # the newest version served: requests without one
    older: dict[int, LoadedVersion] = field(default_factory=dict)  # served by version_policy
    versions: list[int] = field(default_factory=list)  # on disk, and the served one
    failed: dict[int, Refusal] = field(default_factory=dict)  # versions that would not load
    error: str = ""  # the last unexpected poll failure (its traceback is logged once)

    def served(self) -> list[LoadedVersion]:
        """Every version served, newest first."""
        if self.current is None:
            return []
        return [self.current, *(self.older[v] for v in sorted(self.older, reverse=True))]


class ModelManager:
    """Loads and serves the models of one repository.

    Args:
        repository: the model repository.
        runtime: how ONNX Runtime sessions are created.
        models: serve only these model names (default: every model in the repository).
        batching: False disables dynamic batching for every model (each request runs alone).
        warm_up: run each served batch size once before a version reports ready.
        control: the model control mode, `none`, `poll` or `explicit` (see the module doc).
        load_at_start: in `explicit` mode, the models loaded at start-up (`*`: all).
        metrics: which optional latency metrics each version records (`--metrics-config`).
        require_manifest: refuse versions without a manifest.json to verify.
        limits: the batcher queue bound for models whose config.pbtxt sets none.
    """

    def __init__(
        self,
        repository: ModelRepository,
        runtime: RuntimeOptions,
        *,
        models: Sequence[str] = (),
        batching: bool = True,
        warm_up: bool = True,
        control: str = NONE,
        load_at_start: Sequence[str] = (),
        metrics: MetricsConfig | None = None,
        require_manifest: bool = False,
        limits: RequestLimits | None = None,
    ) -> None:
        self.repository = repository
        self.runtime = runtime
        self.control = control
        self._load_at_start = tuple(load_at_start)
        self.limits = limits or RequestLimits()
        self._loader = VersionLoader(
            repository,
            LoadOptions(
                runtime=runtime,
                batching=batching,
                warm_up=warm_up,
                require_manifest=require_manifest,
                metrics=metrics or MetricsConfig(),
                max_queue_size=self.limits.max_queue_size,
            ),
        )
        # How the server's own paths appear in errors, longest first (all are cut from reasons).
        root = repository.root
        self._root_forms = sorted(
            {str(root), str(root.absolute()), str(root.resolve())}, key=len, reverse=True
        )
        self._only = tuple(models)
        self._records: dict[str, ModelRecord] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self.loaded = False  # the start-up load has finished
        self._closing = False

    # -- start-up -----------------------------------------------------------------------------

    def discover(self) -> list[str]:
        """Register the model names to load at start-up (checks `--model` and `--load-model`
        names exist)."""
        available = self._classifiers()
        names = list(self._only) or available
        _check_named(names, available, self.repository)
        if self.control == EXPLICIT:
            if "*" not in self._load_at_start:
                _check_named(self._load_at_start, names, self.repository)
                names = [n for n in names if n in self._load_at_start]
            elif not self._load_at_start:
                names = []
        for name in names:
            self._records.setdefault(name, ModelRecord(name))
        return names

    async def load_all(self) -> None:
        """Load the latest version of every registered model, one after another."""
        for record in list(self._records.values()):
            await self._load_latest(record)
        self.loaded = True

    # -- lookup (hot path) --------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedVersion:
        """The version serving `name` (and `version`, when given).

        Raises:
            NotFound: no such model or version is served.
            Unavailable: the model is known but is loading or could not be loaded.
        """
        record = self._records.get(name)
        if record is None:
            raise NotFound(
                f"unknown model {quoted(name)}; served models: {', '.join(self._records)}"
            )
        current = record.current
        if current is None:
            why = f": {record.reason}" if record.reason else ""
            raise Unavailable(f"model {name!r} is {record.state.lower()}{why}")
        if version and version != current.version_str:
            older = record.older.get(int(version)) if version.isdigit() else None
            if older is not None:
                return older
            served = ", ".join(v.version_str for v in record.served())
            raise NotFound(
                f"model {name!r} has no version {quoted(version)} being served "
                f"(serving version {served})"
            )
        return current

    def record(self, name: str) -> ModelRecord:
        record = self._records.get(name)
        if record is None:
            raise NotFound(
                f"unknown model {quoted(name)}; served models: {', '.join(self._records)}"
            )
        return record

    def names(self) -> KeysView[str]:
        """The names of the models the server knows (served or not)."""
        return self._records.keys()

    def records(self) -> list[ModelRecord]:
        return list(self._records.values())

    def all_stats(self) -> list[ModelStats]:
        """Counters of every version ever served (Prometheus counters never go backwards)."""
        return list(self._loader.stats.values())

    @property
    def ready(self) -> bool:
        """Start-up finished and at least one model serves (in `explicit` mode: start-up
        finished, since serving nothing until a client loads a model is normal there)."""
        if not self.loaded:
            return False
        return self.control == EXPLICIT or any(r.current is not None for r in self.records())

    # -- model control ------------------------------------------------------------------------

    def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the repository (`--model` limits them) with its state, as Triton's
        RepositoryIndex: a served version READY, refused versions UNAVAILABLE with their
        reason, a model never loaded with no state."""
        entries: list[IndexEntry] = []
        for name in sorted(set(self._candidates()) | set(self._records)):
            record = self._records.get(name)
            if record is None:
                if not ready_only:
                    entries.append(IndexEntry(name))
                continue
            for served in record.served():
                entries.append(IndexEntry(name, served.version_str, READY))
            if ready_only:
                continue
            for version, refusal in sorted(record.failed.items(), reverse=True):
                entries.append(IndexEntry(name, str(version), UNAVAILABLE, refusal.reason))
            if record.current is None and not record.failed:
                entries.append(IndexEntry(name, "", record.state, record.reason))
        return entries

    async def load(self, name: str) -> LoadedVersion:
        """Load `name` (or read it again and serve its newest version that loads).

        Raises:
            Unavailable: the control mode is not `explicit`.
            NotFound: the repository has no such model.
            InvalidInput: no version of it loads (the reasons, per version).
        """
        self._require_explicit()
        if name not in self._candidates():
            known = ", ".join(self._candidates()) or "none"
            raise NotFound(f"no model {quoted(name)} in the repository (models: {known})")
        record = self._records.setdefault(name, ModelRecord(name))
        previous = record.current
        await self._load_latest(record, reload=True)
        if record.current is None or record.current is previous:
            failed = "; ".join(
                f"version {v}: {r.reason}" for v, r in sorted(record.failed.items(), reverse=True)
            )
            raise InvalidInput(f"load failed for model {name!r}: {failed or record.reason}")
        return record.current

    async def unload(self, name: str) -> None:
        """Stop serving `name`; its queued requests finish first (unloading a model that is not
        loaded does nothing, as in Triton).

        Raises:
            Unavailable: the control mode is not `explicit`.
            NotFound: the repository has no such model and none by that name is served.
        """
        self._require_explicit()
        record = self._records.get(name)
        if record is None:
            if name not in self._candidates():
                raise NotFound(f"no model {quoted(name)} is served or in the repository")
            return
        async with self._locks.setdefault(name, asyncio.Lock()):
            for served in record.served():
                log.info("unloading %s version %d on request", name, served.version)
                self._retire(served)
            record.current, record.older = None, {}
            record.state, record.reason = UNAVAILABLE, UNLOADED

    def loadable(self, name: str) -> bool:
        """`name` is in the repository but was never loaded (explicit model control)."""
        return name not in self._records and name in self._candidates()

    def _require_explicit(self) -> None:
        if self.control != EXPLICIT:
            raise Unavailable(
                "explicit model load / unload is not allowed: the server runs with "
                f"--model-control-mode {self.control} (start it with --model-control-mode "
                "explicit to load and unload models on request)"
            )

    def _classifiers(self) -> list[str]:
        """The repository's models but its explanation models (config.pbtxt parameter
        `cnnzoo_explanation`): the Explain RPC runs those for their classifier
        (`cnnzoo.serving.explain`)."""
        return [name for name in self.repository.models() if not self._is_explanation(name)]

    def _is_explanation(self, name: str) -> bool:
        try:
            return "cnnzoo_explanation" in self.repository.parameters(name)
        except (CnnzooError, OSError):
            return False  # loading it says what is wrong

    def _candidates(self) -> list[str]:
        """Model names this server may serve: the repository's, limited by `--model`."""
        try:
            available = self._classifiers()
        except OSError as err:
            log.error("cannot list the repository: %s", err)
            return list(self._records)
        return [n for n in available if n in self._only] if self._only else available

    # -- hot reload ---------------------------------------------------------------------------

    async def poll(self) -> None:
        """Pick up new models and new versions from the repository, and check the served ones.

        One model's failure never stops the others from being polled.
        """
        if not self._only:
            try:
                names = self._classifiers()
            except OSError as err:
                names = []
                log.error("cannot list the models of %s: %s", self.repository.root, err)
            for name in names:
                if name not in self._records:
                    log.info("new model %s in the repository", name)
                    self._records[name] = ModelRecord(name)
        for record in list(self._records.values()):
            try:
                await self._load_latest(record)
            except ExecutionProviderError:
                raise
            except Exception as err:  # a bug: logged with its traceback once, polled on
                if record.error != repr(err):
                    log.exception("polling model %s failed", record.name)
                record.error = repr(err)
            else:
                record.error = ""

    # -- loading ------------------------------------------------------------------------------

    async def _load_latest(self, record: ModelRecord, *, reload: bool = False) -> None:
        """Serve the newest version of `record` that loads, if it is newer than the served one
        (with `reload`, also the served version again, and refused ones are retried). One load
        of a model at a time: a client's load may arrive while start-up loads the same model."""
        lock = self._locks.setdefault(record.name, asyncio.Lock())
        async with lock:
            await self._load_newest(record, reload)

    async def _load_newest(self, record: ModelRecord, reload: bool) -> None:
        if self._closing:
            return
        if reload:
            record.failed.clear()
            if record.current is None:
                record.state, record.reason = LOADING, ""
        try:
            found = self.repository.versions(record.name)
        except (CnnzooError, OSError) as err:
            self._refuse(record, self._reason(err))
            return
        policy = self._policy(record, found)
        on_disk = policy.eligible(found)
        current = record.current
        served = current.version if current is not None else -1
        # A served version whose folder was removed (or that the policy no longer names): the
        # newest remaining one takes over.
        removed = current is not None and served not in on_disk
        record.versions = sorted({*on_disk, served}) if current is not None else on_disk
        record.failed = {v: r for v, r in record.failed.items() if v in on_disk}
        for version in reversed(on_disk):
            if (version < served or (version == served and not reload)) and not removed:
                break
            loaded = await self._try_load(record, version)
            if loaded is None:
                continue
            if not self._closing:  # the server may have begun to stop while loading
                if removed:
                    log.warning(
                        "the folder of %s version %d was removed from the repository",
                        record.name,
                        served,
                    )
                self._serve(record, loaded)
                record.versions = on_disk
                await self._load_older(record, on_disk, policy, reload)
            return
        if removed:
            self._note(
                record,
                f"version {served} was removed from the repository and no other version "
                "loads; the copy loaded in memory keeps serving until the server restarts",
            )
        elif current is not None:
            await self._check_served(record, current)
        if record.current is not None:
            await self._load_older(record, on_disk, policy, reload)
        if record.current is None:
            reasons = "; ".join(
                f"version {v}: {r.reason}" for v, r in sorted(record.failed.items(), reverse=True)
            )
            self._refuse(record, reasons or "it has no complete version")

    def _policy(self, record: ModelRecord, on_disk: list[int]) -> VersionPolicy:
        """The model's version_policy (the default when its config.pbtxt cannot be read:
        loading the version then says why)."""
        try:
            policy = VersionPolicy.of(self.repository.config(record.name))
        except (CnnzooError, OSError):
            return VersionPolicy()
        missing = policy.missing(on_disk)
        if missing:
            self._note(
                record,
                f"version_policy {policy} names version {', '.join(map(str, missing))}, which "
                "the model's folder does not have",
            )
        return policy

    async def _load_older(
        self, record: ModelRecord, eligible: list[int], policy: VersionPolicy, reload: bool
    ) -> None:
        """Serve the versions below the newest that the policy asks for too (newest first;
        one that is refused is passed over, as for the newest), and retire the older versions it
        no longer names."""
        current = record.current
        assert current is not None
        wanted = policy.most - 1 if policy.most is not None else len(eligible)
        keep: dict[int, LoadedVersion] = {}
        for version in reversed(eligible):
            if len(keep) >= wanted:
                break
            if version >= current.version:
                continue
            loaded = record.older.get(version)
            if loaded is None or reload:
                loaded = await self._try_load(record, version)
                if loaded is None:
                    continue
                if self._closing:
                    return
                loaded.batcher.start()
                log.info("serving %s version %d on %s", record.name, version, loaded.provider)
            keep[version] = loaded
        for version, loaded in record.older.items():
            if keep.get(version) is not loaded:
                self._retire(loaded)
        record.older = keep

    async def _try_load(self, record: ModelRecord, version: int) -> LoadedVersion | None:
        """Load one version in a worker thread; None when it is refused (the reason recorded
        in `record.failed` with its files' fingerprint, and logged) or was refused before and
        its files have not changed since."""
        files = fingerprint(self.repository, record.name, version)
        refusal = record.failed.get(version)
        if refusal is not None and refusal.fingerprint == files:
            return None  # refused before and unchanged since
        log.info("loading %s version %d", record.name, version)
        try:
            loaded = await asyncio.to_thread(self._loader.load, record.name, version, files)
        except ExecutionProviderError:
            raise  # the device choice is wrong for every model: a start-up error
        except (CnnzooError, OSError) as err:
            reason = self._reason(err)
        except Exception as err:  # e.g. onnxruntime cannot parse the file
            log.exception("loading %s version %d failed", record.name, version)
            reason = self._reason(err)
        else:
            record.failed.pop(version, None)
            return loaded
        record.failed[version] = Refusal(files, reason)
        log.error("refused %s version %d: %s", record.name, version, reason)
        return None

    def _serve(self, record: ModelRecord, loaded: LoadedVersion) -> None:
        """Start `loaded`'s batcher and switch the model to it (on the event loop)."""
        loaded.batcher.start()
        previous, record.current = record.current, loaded  # the switch: one assignment
        record.state, record.reason = READY, ""
        inline = loaded.batcher.inline_rows
        log.info(
            "serving %s version %d on %s%s%s",
            record.name,
            loaded.version,
            loaded.provider,
            f", batches of up to {inline} rows on the event loop" if inline else "",
            f" (replacing version {previous.version})" if previous else "",
        )
        if previous is not None:
            if previous.version != loaded.version:
                # Stays served if the version_policy names it (`_load_older` decides).
                record.older[previous.version] = previous
            else:
                self._retire(previous)

    async def _check_served(self, record: ModelRecord, current: LoadedVersion) -> None:
        """Re-verify the served version when its files changed on disk since it was loaded
        (a version without a manifest has nothing to be verified against)."""
        if current.manifest is None:
            return
        files = fingerprint(self.repository, record.name, current.version)
        if files == current.fingerprint:
            return
        try:
            await asyncio.to_thread(self.repository.verify, record.name, current.version)
        except (CnnzooError, OSError) as err:
            self._note(
                record,
                f"the files of version {current.version} changed on disk after it was loaded "
                f"({self._reason(err)}); the verified copy loaded in memory keeps serving, and a "
                "restart would refuse this version",
            )
        else:
            record.reason = ""
        current.fingerprint = files  # reported once per change

    def _note(self, record: ModelRecord, reason: str) -> None:
        """Report a problem of the served version (logged once; ListModels shows it)."""
        if record.reason != reason:
            log.error("model %s: %s", record.name, reason)
        record.reason = reason

    def _reason(self, err: BaseException) -> str:
        """A refusal's reason as clients may see it: without the server's repository path."""
        if isinstance(err, CnnzooError):
            text = err.reason
        elif isinstance(err, OSError) and err.strerror:
            where = f": {err.filename}" if err.filename else ""
            text = f"cannot read the model's files ({err.strerror}{where})"
        else:
            text = f"{type(err).__name__}: {err}"
        for form in self._root_forms:
            text = text.replace(form + "/", "").replace(form, "the model repository")
        return text

    def _refuse(self, record: ModelRecord, reason: str) -> None:
        """Report that `record` has nothing (new) to serve, once per reason."""
        if record.current is not None:
            log.error(
                "model %s keeps serving version %d: %s", record.name, record.current.version, reason
            )
            return
        if record.state == UNAVAILABLE and record.reason == reason:
            return  # already reported (the repository poll sees it again)
        record.state, record.reason = UNAVAILABLE, reason
        log.error("model %s is unavailable: %s", record.name, reason)

    def _retire(self, loaded: LoadedVersion) -> None:
        task = asyncio.get_running_loop().create_task(self._close_version(loaded))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _close_version(loaded: LoadedVersion) -> None:
        await loaded.batcher.close()  # finishes every request it had queued
        log.info("unloaded %s version %d", loaded.name, loaded.version)

    # -- shutdown -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Finish queued requests of every version, then release them."""
        self._closing = True
        for record in self._records.values():
            if record.current is not None:
                for served in record.served():
                    self._retire(served)
                record.current, record.older, record.state = None, {}, UNAVAILABLE
                record.reason = "the server is shutting down"
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def _check_named(
    names: Sequence[str], available: Sequence[str], repository: ModelRepository
) -> None:
    missing = [n for n in names if n not in available]
    if missing:
        raise NotFound(
            f"model {', '.join(map(repr, missing))} is not in {repository.root} "
            f"(models: {', '.join(available) or 'none'})"
        )
