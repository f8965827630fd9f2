"""ONNX Runtime executor: one InferenceSession per segment, activations in host memory, CPU by default.

Execution providers are checked twice, since onnxruntime-gpu quietly runs on the CPU when CUDA or
TensorRT cannot start: a requested provider must be in get_available_providers() before the session is
made, and in the session's get_providers() after. Either miss is one line, never a silent fallback.
"""
from edge_runtime.backends.base import Executor
from edge_runtime.core.chain import HIDDEN_OUT, carried_names, host_outputs, next_feed
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.lazy import lazy_import


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


def session_from_file(path, providers, intra_op_num_threads: int = 0, name: str = None):
    """The loader: an InferenceSession on `path` that really runs on every requested provider.

    Args:
        path: an ONNX file.
        providers: execution providers in priority order.
        intra_op_num_threads: 0 = ONNX Runtime's default (one per physical core).
        name: what messages call the file (default: its name).
    """
    ort = lazy_import("onnxruntime", extra="runtime")
    providers = check_providers(ort, providers)
    label = name or str(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_num_threads
    opts.inter_op_num_threads = 1      # segments are one chain of ops: no parallel branches to run
    opts.log_severity_level = 3        # errors only; warnings go to the console otherwise
    if list(providers) == ["CPUExecutionProvider"]:
        shared_cpu_arena(ort)
        opts.add_session_config_entry("session.use_env_allocators", "1")
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
    """The ORT handle: the next segment's feed, in host memory, and the pass-through inputs."""
    __slots__ = ("feed", "carried")

    def __init__(self, feed: dict, carried: dict):
        self.feed, self.carried = feed, carried


class OrtExecutor(Executor):
    name = "onnxruntime"

    def __init__(self, graphs: list, providers=("CPUExecutionProvider",), intra_op_num_threads: int = 0):
        """Args:
            graphs: [GraphSpec] in chain order.
            providers: ONNX Runtime execution providers, in priority order.
            intra_op_num_threads: threads per session (0: ONNX Runtime's default).
        """
        super().__init__(graphs)
        self.providers = tuple(providers)
        self.intra_op_num_threads = intra_op_num_threads
        self.sessions = []
        self.carried = carried_names([g.inputs for g in self.graphs])
        self.output_names = [[o["name"] for o in g.outputs] for g in self.graphs]
        self.host = [host_outputs(g.outputs) for g in self.graphs]

    def load(self) -> None:
        sessions = []
        for spec in self.graphs:
            s = session_from_file(spec.path, self.providers, self.intra_op_num_threads, spec.path.name)
            got, want = [i.name for i in s.get_inputs()], [i["name"] for i in spec.inputs]
            if got != want:
                raise EdgeError(f"{spec.path.name} | inputs {got}, the manifest says {want}", Exit.CORRUPT)
            outs = [o.name for o in s.get_outputs()]
            if any(o["name"] not in outs for o in spec.outputs):
                raise EdgeError(f"{spec.path.name} | outputs {outs}, the manifest says "
                                f"{[o['name'] for o in spec.outputs]}", Exit.CORRUPT)
            sessions.append(s)
        self.sessions = sessions

    def unload(self) -> None:
        self.sessions = []

    def describe(self) -> str:
        first = self.sessions[0].get_providers() if self.sessions else list(self.providers)
        threads = self.intra_op_num_threads or "default"
        return f"{self.name} ({', '.join(first)}, {threads} thread(s))"

    @property
    def active_providers(self) -> list:
        """The providers the sessions run on (after open)."""
        return self.sessions[0].get_providers() if self.sessions else []

    def place(self, feed: dict) -> Rows:
        return Rows(feed, {name: feed[name] for name in self.carried})

    def run(self, k: int, rows: Rows) -> dict:
        """Every output of segment k on `rows`, as numpy arrays ({name: array})."""
        names = self.output_names[k]
        return dict(zip(names, self.sessions[k].run(names, rows.feed)))

    def segment(self, k: int, rows: Rows) -> tuple:
        out = self.run(k, rows)
        host = {n: out[n] for n in self.host[k]}
        if k + 1 == len(self.graphs):
            return None, host
        return Rows(next_feed(self.graphs[k + 1].inputs, out[HIDDEN_OUT], rows.carried), rows.carried), host

    def keep(self, rows: Rows, mask):
        feed = {name: v[mask] for name, v in rows.feed.items()}
        carried = {name: feed[name] if name in feed else v[mask] for name, v in rows.carried.items()}
        return Rows(feed, carried)

    def chain(self, j: int, d: int, rows: Rows) -> dict:
        host = None
        for k in range(j, d + 1):
            rows, host = self.segment(k, rows)
        return host
