"""ONNX Runtime executor: one InferenceSession per graph (segments, chain graphs), activations in host
memory, CPU by default. Sessions are made when a graph first runs, or at open for the ones named there.

Execution providers are checked twice, since onnxruntime-gpu quietly runs on the CPU when CUDA or
TensorRT cannot start: a requested provider must be in get_available_providers() before the session is
made, and in the session's get_providers() after. Either miss is one line, never a silent fallback.
"""
import atexit
import threading

from edge_runtime.backends.base import Executor
from edge_runtime.core.chain import HIDDEN_OUT, carried_names, host_outputs, next_feed
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.lazy import lazy_import

LOGITS = ["logits"]


def check_providers(ort, providers) -> list:
    """The requested providers, each one available in this onnxruntime build."""
    have = ort.get_available_providers()
    for p in providers:
        if p not in have:
            raise EdgeError(f"provider '{p}' | not available in this onnxruntime {ort.__version__} "
                            f"(available: {', '.join(have)})", Exit.BAD_INPUT)
    return list(providers)


_SHARED_ARENA = []   # registered once per process: ORT keeps it in its global environment


def shared_cpu_arena(ort) -> None:
    """One CPU arena for every session that opts in: segments run one after another, so they can share
    activation memory instead of each keeping its own arena (1.30x -> 1.04x the static model's memory
    on the digits engines, benchmarks/memory.py)."""
    if not _SHARED_ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _SHARED_ARENA.append(info)


def session_options(ort, intra_op_num_threads: int, providers) -> object:
    """The one SessionOptions every session of a runtime is made with.

    Spinning: ONNX Runtime's pool threads spin for a while after each parallel section, waiting for more
    work. One session that is what keeps it fast; a chain runs several sessions in turn, and each one's
    pool spins on after its run, taking the cores from the next session's threads (2 threads ran full depth
    4-9x slower than 1 on this 2-core machine). force_spinning_stop ends the spinning when a run returns:
    spinning inside a run, none between runs.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_num_threads
    opts.inter_op_num_threads = 1      # segments are one chain of ops: no parallel branches to run
    opts.log_severity_level = 3        # errors only; warnings go to the console otherwise
    if intra_op_num_threads != 1:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    if list(providers) == ["CPUExecutionProvider"]:
        shared_cpu_arena(ort)
        opts.add_session_config_entry("session.use_env_allocators", "1")
    return opts


def session_from_file(path, providers, intra_op_num_threads: int = 0, name: str = None, options=None):
    """The loader: an InferenceSession on `path` that really runs on every requested provider.

    Args:
        path: an ONNX file.
        providers: execution providers in priority order.
        intra_op_num_threads: 0 = ONNX Runtime's default (one per physical core).
        name: what messages call the file (default: its name).
        options: a SessionOptions to use (default: session_options(...) with these threads).
    """
    ort = lazy_import("onnxruntime", extra="runtime")
    providers = check_providers(ort, providers)
    label = name or str(path)
    opts = options or session_options(ort, intra_op_num_threads, providers)
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as err:           # ORT has its own exception types (Fail, InvalidGraph, NoSuchFile...)
        raise EdgeError(f"{label} | onnxruntime cannot load it ({str(err).splitlines()[0]})", Exit.CORRUPT) from None
    got = session.get_providers()
    missing = [p for p in providers if p not in got]
    if missing:
        raise EdgeError(f"{label} | onnxruntime fell back: asked for {', '.join(providers)}, the session runs "
                        f"on {', '.join(got)}", Exit.BAD_INPUT)
    return session


class Rows:
    """The ORT handle: the next segment's feed, in host memory, the pass-through inputs, and the session
    tier its batch runs on (0: one thread; 1: the executor's threads)."""
    __slots__ = ("feed", "carried", "tier")

    def __init__(self, feed: dict, carried: dict, tier: int = 0):
        self.feed, self.carried, self.tier = feed, carried, tier


# Below this many rows a call runs on single-thread sessions even when more threads are asked for: on this
# 2-core machine 2 threads ran every path 14-31 % slower than 1 at batch 1 and 0-19 % slower at batch 8 (the
# plain graph too: each op is too small to split), and 10-38 % faster at batch 32 (benchmarks/threads.py).
PARALLEL_FROM = 16


class OrtExecutor(Executor):
    name = "onnxruntime"

    def __init__(self, graphs: list, providers=("CPUExecutionProvider",), intra_op_num_threads: int = 0,
                 chains: dict = None):
        """Args:
            graphs: [GraphSpec] in chain order.
            providers: ONNX Runtime execution providers, in priority order.
            intra_op_num_threads: threads per session (0: ONNX Runtime's default).
            chains: {(from, to): GraphSpec}, the build's chain graphs.
        """
        super().__init__(graphs, chains)
        self.providers = tuple(providers)
        self.intra_op_num_threads = intra_op_num_threads
        # tier 0 runs one thread; tier 1, when more are asked for, the calls of PARALLEL_FROM rows or more
        self.tiers = (1,) if intra_op_num_threads == 1 else (1, intra_op_num_threads)
        self.sessions = {}             # (tier, graph name) -> InferenceSession, made when first needed
        self._options = {}
        self._runs = [[None] * len(self.graphs) for _ in self.tiers]   # segment k's bound session.run
        self._locks, self._loader, self._stop_loading = {}, None, threading.Event()
        self.carried = carried_names([g.inputs for g in self.graphs])
        self.output_names = [[o["name"] for o in g.outputs] for g in self.graphs]
        self.host = [host_outputs(g.outputs, k) for k, g in enumerate(self.graphs)]

    def session(self, name: str, tier: int = 0):
        s = self.sessions.get((tier, name))
        if s is None:
            with self._locks.setdefault((tier, name), threading.Lock()):   # the background loader may be on it
                s = self.sessions.get((tier, name))
                if s is None:
                    s = self.sessions[(tier, name)] = self._load(self.spec(name), self.tiers[tier])
        return s

    def _load_later(self, names: list) -> None:
        for name in names:
            if self._stop_loading.is_set():
                return
            try:
                self.session(name)
            except EdgeError:           # the call that needs it loads it again, and says why in one line
                pass

    def _load(self, spec, threads: int):
        if threads not in self._options:
            ort = lazy_import("onnxruntime", extra="runtime")
            self._options[threads] = session_options(ort, threads, self.providers)   # session_from_file checks them
        s = session_from_file(spec.path, self.providers, threads, spec.path.name, self._options[threads])
        got, want = [i.name for i in s.get_inputs()], [i["name"] for i in spec.inputs]
        if got != want:
            raise EdgeError(f"{spec.path.name} | inputs {got}, the manifest says {want}", Exit.CORRUPT)
        outs = [o.name for o in s.get_outputs()]
        if any(o["name"] not in outs for o in spec.outputs):
            raise EdgeError(f"{spec.path.name} | outputs {outs}, the manifest says "
                            f"{[o['name'] for o in spec.outputs]}", Exit.CORRUPT)
        return s

    def load(self, names: list, later: list = ()) -> None:
        """The single-thread sessions of `names`, then of `later` in a background thread (ONNX Runtime
        builds a session without the GIL); the multi-thread tier loads with the first large batch."""
        self.unload()
        for name in names:
            self.session(name)
        if later:
            self._stop_loading.clear()
            self._loader = threading.Thread(target=self._load_later, args=(list(later),), daemon=True,
                                            name="edge-runtime-loader")
            self._loader.start()
            atexit.register(self._stop_loader)     # a process exiting mid-load would abort inside ONNX Runtime

    def wait_loaded(self) -> None:
        """Wait until the background loader has made every session it was given."""
        if self._loader is not None:
            self._loader.join()

    def _stop_loader(self) -> None:
        if self._loader is not None:
            self._stop_loading.set()
            self._loader.join()
            self._loader = None
            atexit.unregister(self._stop_loader)

    def unload(self) -> None:
        self._stop_loader()
        self.sessions, self._runs = {}, [[None] * len(self.graphs) for _ in self.tiers]

    def describe(self) -> str:
        threads = self.intra_op_num_threads or "default"
        if len(self.tiers) > 1:
            threads = f"{threads} from batch {PARALLEL_FROM}, 1 below"
        return f"{self.name} ({', '.join(self.active_providers or self.providers)}, {threads} thread(s))"

    @property
    def active_providers(self) -> list:
        """The providers the sessions run on (after open)."""
        return next(iter(self.sessions.values())).get_providers() if self.sessions else []

    def tier(self, feed: dict) -> int:
        return 1 if len(self.tiers) > 1 and len(next(iter(feed.values()))) >= PARALLEL_FROM else 0

    def place(self, feed: dict) -> Rows:
        return Rows(feed, {name: feed[name] for name in self.carried} if self.carried else {}, self.tier(feed))

    def run(self, k: int, rows: Rows) -> dict:
        """Every output of segment k on `rows`, as numpy arrays ({name: array})."""
        run = self._runs[rows.tier][k]
        if run is None:
            run = self._runs[rows.tier][k] = self.session(self.graphs[k].name, rows.tier).run
        names = self.output_names[k]
        return dict(zip(names, run(names, rows.feed)))

    def segment(self, k: int, rows: Rows) -> tuple:
        out = self.run(k, rows)
        host = {n: out[n] for n in self.host[k]}
        if k + 1 == len(self.graphs):
            return None, host
        return Rows(next_feed(self.graphs[k + 1].inputs, out[HIDDEN_OUT], rows.carried), rows.carried,
                    rows.tier), host

    def keep(self, rows: Rows, mask):
        feed = {name: v[mask] for name, v in rows.feed.items()}
        carried = {name: feed[name] if name in feed else v[mask] for name, v in rows.carried.items()}
        return Rows(feed, carried, self.tier(feed))

    def chain(self, j: int, d: int, rows: Rows) -> dict:
        spec = self.chains.get((j, d))
        if spec is not None:            # one graph, exit d's head only
            return {"logits": self.session(spec.name, rows.tier).run(LOGITS, rows.feed)[0]}
        host = None
        for k in range(j, d + 1):
            rows, host = self.segment(k, rows)
        return host
