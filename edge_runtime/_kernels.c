/* edge_runtime._kernels: the device controller's inner loops, compiled ahead of time (pip install -e .).
 *
 * forest          the level-1 tree ensemble (edge_runtime.core.predictor.TreeEnsemble)
 * start, boundary the level-2 LSTM policy's rollout state and its step at one exit boundary
 *                 (edge_runtime.core.policy.PolicyArrays)
 * first_boundary  features + forest + start + boundary(0): progressive's one call after segment 0
 * oneshot         features + forest + the exit each row runs to: oneshot's one call after segment 0
 * confidence, features  the controller's inputs from a segment's outputs (edge_runtime.core.features):
 *                 computed here, they cost the graphs nothing (edge_model.export)
 * top1            per-row argmax and its softmax probability (the runtime's result path)
 *
 * Plain C99 on the buffer protocol only (no numpy headers); CPython 3.8+. The caller allocates every output.
 * Each buffer is checked (format and item size, C-contiguity, alignment, ndim, shapes) before anything is
 * written; node, feature and class indices in the trees are checked as they are visited (a child must come
 * after its parent, as TreeEnsemble lays them out, so a walk always ends). Any mismatch is a TypeError
 * (the wrong kind of buffer) or a ValueError (wrong shapes or values) naming the argument. The arithmetic is
 * that of the numba functions these replaced (float32 arrays, expf / logf, the sums and the LSTM's gate
 * products in double where numba promoted them), but for the LSTM's tanh (tanh_fast: within 1e-9 of libm's,
 * so a gate may differ from numba's in its last float32 bit).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef enum { F32, F64, I64, BOOL } Kind;

static const char *kind_name[] = {"float32", "float64", "int64", "bool"};

/* A held buffer; `held` says whether to release it. */
typedef struct {
    Py_buffer view;
    int held;
} Buf;

static int native_prefix(char c)
{
    const uint16_t one = 1;
    const int little = *(const unsigned char *)&one == 1;
    return c == '@' || c == '=' || (little ? c == '<' : c == '>');
}

static int format_ok(const Py_buffer *v, Kind kind)
{
    const char *f = v->format ? v->format : "B";
    if (native_prefix(f[0]))
        f++;
    if (f[0] == '\0' || f[1] != '\0')
        return 0;
    switch (kind) {
    case F32: return f[0] == 'f' && v->itemsize == 4;
    case F64: return f[0] == 'd' && v->itemsize == 8;
    case I64: return (f[0] == 'q' || f[0] == 'l') && v->itemsize == 8;
    case BOOL: return (f[0] == '?' || f[0] == 'B') && v->itemsize == 1;
    }
    return 0;
}

/* Take obj's buffer into b, checked; on failure an exception is set and nothing is held. */
static int take(PyObject *obj, Buf *b, const char *name, Kind kind, int ndim, int writable)
{
    int flags = PyBUF_RECORDS_RO | (writable ? PyBUF_WRITABLE : 0);
    Py_buffer *v = &b->view;
    b->held = 0;
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: a %s array expected, got %.80s", name, kind_name[kind],
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, v, flags) < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (value != NULL)
            PyErr_Format(PyExc_TypeError, "%s: %S", name, value);
        else
            PyErr_Format(PyExc_TypeError, "%s: no %sbuffer", name, writable ? "writable " : "");
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return -1;
    }
    b->held = 1;
    if (!format_ok(v, kind)) {
        PyErr_Format(PyExc_TypeError, "%s: %s expected, got format '%s' of item size %zd", name, kind_name[kind],
                     v->format ? v->format : "B", v->itemsize);
        goto fail;
    }
    if (v->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: %d dimension(s) expected, got %d", name, ndim, v->ndim);
        goto fail;
    }
    if (!PyBuffer_IsContiguous(v, 'C')) {
        PyErr_Format(PyExc_TypeError, "%s: not C-contiguous", name);
        goto fail;
    }
    Py_ssize_t items = 1;                  /* the shape is all the kernels index by: it must cover len */
    for (int i = 0; i < ndim; i++) {
        if (v->shape[i] < 0 || (v->shape[i] > 0 && items > PY_SSIZE_T_MAX / v->itemsize / v->shape[i]))
            items = -1;
        else
            items *= v->shape[i];
        if (items < 0)
            break;
    }
    if (items < 0 || items * v->itemsize != v->len) {
        PyErr_Format(PyExc_TypeError, "%s: its shape does not match its length", name);
        goto fail;
    }
    if ((uintptr_t)v->buf % (uintptr_t)v->itemsize != 0) {
        PyErr_Format(PyExc_TypeError, "%s: not aligned to its item size", name);
        goto fail;
    }
    return 0;
fail:
    PyBuffer_Release(v);
    b->held = 0;
    return -1;
}

static void release(Buf *bufs, int count)
{
    for (int i = 0; i < count; i++) {
        if (bufs[i].held) {
            PyBuffer_Release(&bufs[i].view);
            bufs[i].held = 0;
        }
    }
}

static Py_ssize_t dim(const Buf *b, int i) { return b->view.shape[i]; }

static int shape_error(const char *name, const char *want)
{
    PyErr_Format(PyExc_ValueError, "%s: shape must be %s", name, want);
    return -1;
}

static int nargs(PyObject *args, Py_ssize_t want, const char *fn)
{
    if (PyTuple_GET_SIZE(args) != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", fn, want, PyTuple_GET_SIZE(args));
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * The tree walk. Each node is a row of 4 float32 (TreeEnsemble): branch: threshold, feature f (BRANCH_LEQ) or
 * -(f + 2) (BRANCH_LT), true child, false child; leaf: 0, -1, class, weight. */

typedef struct {
    const float *x;             /* (n, F) */
    Py_ssize_t n, F;
    const float *nodes;         /* (N, 4) */
    const unsigned char *nan_true;   /* (N,) */
    Py_ssize_t N;
    const int64_t *roots;       /* (T,) */
    Py_ssize_t T;
    int softmax;
    float *out;                 /* (n, C) */
    Py_ssize_t C;
} Forest;

/* Forest arguments x, nodes, nan_true, roots and out (named out_name), out (n, classes) checked against x and,
 * when classes >= 0, its column count. */
static int forest_shapes(Forest *fo, Buf *x, Buf *nodes, Buf *nan_true, Buf *roots, Buf *out, const char *out_name,
                         Py_ssize_t classes)
{
    fo->n = dim(x, 0);
    fo->F = dim(x, 1);
    fo->N = dim(nodes, 0);
    fo->T = dim(roots, 0);
    fo->C = dim(out, 1);
    if (dim(nodes, 1) != 4)
        return shape_error("nodes", "(nodes, 4)");
    if (dim(nan_true, 0) != fo->N)
        return shape_error("nan_true", "(nodes,), as nodes");
    if (dim(out, 0) != fo->n || fo->C < 1 || (classes >= 0 && fo->C != classes))
        return shape_error(out_name, classes >= 0 ? "(n, exits), n as features' and exits as preds'"
                                                  : "(n, classes), n as x's and at least one class");
    fo->x = (const float *)x->view.buf;
    fo->nodes = (const float *)nodes->view.buf;
    fo->nan_true = (const unsigned char *)nan_true->view.buf;
    fo->roots = (const int64_t *)roots->view.buf;
    fo->out = (float *)out->view.buf;
    for (Py_ssize_t t = 0; t < fo->T; t++) {
        if (fo->roots[t] < 0 || fo->roots[t] >= fo->N) {
            PyErr_Format(PyExc_ValueError, "roots: tree %zd starts at node %lld, not below %zd", t,
                         (long long)fo->roots[t], fo->N);
            return -1;
        }
    }
    return 0;
}

static int bad_node(Py_ssize_t j, const char *what)
{
    PyErr_Format(PyExc_ValueError, "nodes: node %zd has %s", j, what);
    return -1;
}

typedef struct {             /* the bounds a node's floats must lie in, as doubles (exact for any index) */
    double feature_lo, feature_hi, classes, nodes;
} Bounds;

/* One step down a tree from node j: the next node (always a later one, so a walk ends), or -1 when j is a
 * leaf (its class checked), or -2 with an exception set when j is malformed. Each float is range-checked
 * before it becomes an integer (converting a NaN or an out-of-range float is undefined). */
static inline Py_ssize_t descend(const Forest *fo, const Bounds *b, const float *row, Py_ssize_t j)
{
    const float *nd = fo->nodes + 4 * j;
    if (!(nd[1] > b->feature_lo && nd[1] < b->feature_hi))
        return bad_node(j, "a feature index outside the input's columns") - 1;
    const long long f = (long long)nd[1];
    if (f == -1) {                                       /* a leaf: class, weight */
        if (!(nd[2] > -1.0 && nd[2] < b->classes))
            return bad_node(j, "a class index outside out's columns") - 1;
        return -1;
    }
    if (f >= fo->F)                                      /* (-1, 0) truncates to 0, and F may be 0 */
        return bad_node(j, "a feature index outside the input's columns") - 1;
    const float v = row[f >= 0 ? f : -f - 2];
    int go;
    if (v != v)
        go = fo->nan_true[j] != 0;
    else if (f >= 0)
        go = v <= nd[0];
    else
        go = v < nd[0];
    const float child = go ? nd[2] : nd[3];
    if (!(child > (double)j && child < b->nodes) || (Py_ssize_t)child <= j)
        return bad_node(j, "a child that is not a later node") - 1;
    return (Py_ssize_t)child;
}

static int run_forest(const Forest *fo)
{
    const Py_ssize_t F = fo->F, C = fo->C, T = fo->T;
    const Bounds b = {-(double)F - 2.0, (double)F, (double)C, (double)fo->N};
    memset(fo->out, 0, (size_t)fo->n * (size_t)C * sizeof(float));
    for (Py_ssize_t r = 0; r < fo->n; r++) {
        const float *row = fo->x + r * F;
        float *o = fo->out + r * C;
        for (Py_ssize_t t = 0; t < T; t++) {
            Py_ssize_t j = (Py_ssize_t)fo->roots[t], next;
            while ((next = descend(fo, &b, row, j)) >= 0)
                j = next;
            if (next != -1)
                return -1;
            o[(Py_ssize_t)fo->nodes[4 * j + 2]] += fo->nodes[4 * j + 3];
        }
        if (fo->softmax) {
            float top = o[0];
            for (Py_ssize_t c = 1; c < C; c++)
                if (o[c] > top)
                    top = o[c];
            double total = 0.0;
            for (Py_ssize_t c = 0; c < C; c++) {
                o[c] = expf(o[c] - top);
                total += o[c];
            }
            for (Py_ssize_t c = 0; c < C; c++)
                o[c] = (float)((double)o[c] / total);
        }
    }
    return 0;
}

static PyObject *py_forest(PyObject *self, PyObject *args)
{
    Buf b[5];
    Forest fo;
    int softmax;
    (void)self;
    if (nargs(args, 6, "forest") < 0)
        return NULL;
    memset(b, 0, sizeof(b));
    if ((softmax = PyObject_IsTrue(PyTuple_GET_ITEM(args, 4))) < 0)
        return NULL;
    if (take(PyTuple_GET_ITEM(args, 0), &b[0], "x", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 1), &b[1], "nodes", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 2), &b[2], "nan_true", BOOL, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 3), &b[3], "roots", I64, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 5), &b[4], "out", F32, 2, 1) < 0 ||
        forest_shapes(&fo, &b[0], &b[1], &b[2], &b[3], &b[4], "out", -1) < 0)
        goto fail;
    fo.softmax = softmax;
    if (run_forest(&fo) < 0)
        goto fail;
    release(b, 5);
    Py_RETURN_NONE;
fail:
    release(b, 5);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------------
 * The policy. st's row: x (S = E + 9 columns, policy_state's layout), h (H), c (H), then the predictor's
 * cumulative distribution (E). w: (S + H + 1, 4H + 1), rows x, h, bias; columns the gates i f o g (i f o
 * halved: sigmoid(z) = 0.5 + 0.5 tanh(z / 2)), then the actor. */

typedef struct {
    Py_ssize_t n, E, S, H, W;
    float *st;                  /* (n, W), W = S + 2H + E */
    int64_t *preds;             /* (n, E) */
} State;

static int state_shapes(State *s, Buf *st, Buf *preds)
{
    s->n = dim(preds, 0);
    s->E = dim(preds, 1);
    s->S = s->E + 9;
    s->W = dim(st, 1);
    if (s->E < 1)
        return shape_error("preds", "(n, exits) with at least one exit");
    if (dim(st, 0) != s->n || s->W < s->S + s->E || (s->W - s->S - s->E) % 2 != 0)
        return shape_error("st", "(n, exits + 9 + 2 * hidden + exits), n as preds'");
    s->H = (s->W - s->S - s->E) / 2;
    s->st = (float *)st->view.buf;
    s->preds = (int64_t *)preds->view.buf;
    return 0;
}

static void run_start(const State *s, const float *proba, const float *lam, int use_predictor)
{
    const Py_ssize_t E = s->E, S = s->S, W = s->W, mass0 = S + 2 * s->H;
    memset(s->st, 0, (size_t)s->n * (size_t)W * sizeof(float));
    memset(s->preds, 0, (size_t)s->n * (size_t)E * sizeof(int64_t));
    for (Py_ssize_t r = 0; r < s->n; r++) {
        float *row = s->st + r * W;
        if (use_predictor) {
            const float *p = proba + r * E;
            double total = 0.0;
            for (Py_ssize_t j = 0; j < E; j++) {
                row[j] = p[j];
                total += p[j];
                row[mass0 + j] = (float)total;
            }
        }
        row[S - 1] = logf(lam[r]);
    }
}

static PyObject *py_start(PyObject *self, PyObject *args)
{
    Buf b[4];
    State s;
    int use_predictor;
    (void)self;
    if (nargs(args, 5, "start") < 0)
        return NULL;
    memset(b, 0, sizeof(b));
    if ((use_predictor = PyObject_IsTrue(PyTuple_GET_ITEM(args, 2))) < 0)
        return NULL;
    if (take(PyTuple_GET_ITEM(args, 0), &b[0], "proba", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 1), &b[1], "lam", F32, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 3), &b[2], "st", F32, 2, 1) < 0 ||
        take(PyTuple_GET_ITEM(args, 4), &b[3], "preds", I64, 2, 1) < 0 ||
        state_shapes(&s, &b[2], &b[3]) < 0)
        goto fail;
    if (dim(&b[0], 0) != s.n || dim(&b[0], 1) != s.E) {
        shape_error("proba", "(n, exits), as preds");
        goto fail;
    }
    if (dim(&b[1], 0) != s.n) {
        shape_error("lam", "(n,), as preds");
        goto fail;
    }
    run_start(&s, (const float *)b[0].view.buf, (const float *)b[1].view.buf, use_predictor);
    release(b, 4);
    Py_RETURN_NONE;
fail:
    release(b, 4);
    return NULL;
}

typedef struct {
    Py_ssize_t k, C;
    const float *logits;        /* (n, C) */
    const float *w;             /* (S + H + 1, 4H + 1) */
    const float *used;          /* (E,) */
    unsigned char *stop;        /* (n,) */
} Step;

/* logits, w, used, stop of a boundary, checked against the state s. */
static int step_shapes(Step *p, const State *s, Py_ssize_t k, Buf *logits, Buf *w, Buf *used, Buf *stop)
{
    if (k < 0 || k >= s->E) {
        PyErr_Format(PyExc_ValueError, "k: boundary %zd of %zd exits", k, s->E);
        return -1;
    }
    if (dim(logits, 0) != s->n || dim(logits, 1) < 2)
        return shape_error("logits", "(n, classes), n as preds' and at least two classes");
    if (dim(w, 0) != s->S + s->H + 1 || dim(w, 1) != 4 * s->H + 1)
        return shape_error("w", "(exits + 9 + hidden + 1, 4 * hidden + 1), hidden from st");
    if (dim(used, 0) != s->E)
        return shape_error("used", "(exits,), as preds");
    if (dim(stop, 0) != s->n)
        return shape_error("stop", "(n,), as preds");
    p->k = k;
    p->C = dim(logits, 1);
    p->logits = (const float *)logits->view.buf;
    p->w = (const float *)w->view.buf;
    p->used = (const float *)used->view.buf;
    p->stop = (unsigned char *)stop->view.buf;
    return 0;
}

/* numpy's argmax: the first NaN if there is one, else the first maximum */
static Py_ssize_t argmax(const float *v, Py_ssize_t count)
{
    Py_ssize_t best = 0;
    float top = v[0];
    if (top != top)
        return 0;
    for (Py_ssize_t i = 1; i < count; i++) {
        if (v[i] != v[i])
            return i;
        if (v[i] > top) {
            top = v[i];
            best = i;
        }
    }
    return best;
}

/* edge_runtime.core.features.confidence of one row of C >= 2 logits, in double: max probability, top-1 minus
 * top-2 probability, entropy / log(C). */
static void confidence_row(const float *v, Py_ssize_t C, float out[3])
{
    double top = v[0], second = -INFINITY;
    for (Py_ssize_t c = 1; c < C; c++) {
        if (v[c] > top) {
            second = top;
            top = v[c];
        } else if (v[c] > second) {
            second = v[c];
        }
    }
    double total = 0.0, plogp = 0.0;
    for (Py_ssize_t c = 0; c < C; c++) {
        const double z = (double)v[c] - top, e = exp(z);
        total += e;
        plogp += e * z;
    }
    const double log_total = log(total);
    out[0] = (float)(1.0 / total);
    out[1] = (float)((1.0 - exp(second - top)) / total);
    /* -sum p log p with p = e / total and log p = z - log total */
    out[2] = (float)((log_total - plogp / total) / log((double)C));
}

/* tanh for the LSTM's gates, in double: libm's tanhf and tanh took half of a boundary's instructions
 * (callgrind: 25k of 55k at hidden 64). tanh |x| = (1 - t) / (1 + t) with t = exp(-2|x|) = 2^y, y split into
 * an integer n (rounded by adding 1.5 * 2^52, whose low mantissa bits then hold n) and f in [-1/2, 1/2];
 * 2^f = e^z, z = f ln 2, by its Taylor series to z^8 (relative error below 2e-10). Below |x| = 1/16, where
 * 1 - t cancels, the odd series to x^9 (error below 1e-13). Absolute error under 1e-9 everywhere, far below
 * float32's rounding of the gates. */
static inline double tanh_fast(double x)
{
    const double ax = fabs(x);
    if (ax < 0.0625) {
        const double x2 = x * x;
        return x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))));
    }
    double y = -2.8853900817779268 * ax;                  /* -2 |x| / ln 2 */
    if (y < -1000.0)
        y = -1000.0;
    const double shifter = 6755399441055744.0;           /* 1.5 * 2^52 */
    const double big = y + shifter;
    const double n = big - shifter;                      /* y rounded to an integer */
    int64_t bits;
    memcpy(&bits, &big, sizeof bits);
    const int64_t k = (int64_t)(int32_t)(uint32_t)(bits & 0xffffffff);   /* that integer, from big's low bits */
    const double z = (y - n) * 0.6931471805599453;
    const double ez = 1.0 + z * (1.0 + z * (0.5 + z * (1.0 / 6.0 + z * (1.0 / 24.0 + z * (1.0 / 120.0 +
                      z * (1.0 / 720.0 + z * (1.0 / 5040.0 + z * (1.0 / 40320.0))))))));
    const int64_t scale_bits = (k + 1023) << 52;
    double scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    const double t = ez * scale;
    const double r = (1.0 - t) / (1.0 + t);
    return x < 0.0 ? -r : r;
}

/* g += sum over the m rows of v[i] * w[i] (each 4 * quads floats), the rows added in order as a plain loop
 * does, but four rows per pass over g so that g stays in registers; -O2's SLP vectorizer makes each quad
 * one 128-bit multiply and add (SSE, NEON). */
static void gemv4(float *restrict g, const float *v, const float *const *w, Py_ssize_t m, Py_ssize_t quads)
{
    Py_ssize_t i = 0;
    for (; i + 4 <= m; i += 4) {
        const float v0 = v[i], v1 = v[i + 1], v2 = v[i + 2], v3 = v[i + 3];
        const float *restrict w0 = w[i], *restrict w1 = w[i + 1], *restrict w2 = w[i + 2], *restrict w3 = w[i + 3];
        for (Py_ssize_t q = 0; q < 4 * quads; q += 4) {
            for (int e = 0; e < 4; e++) {
                float a = g[q + e];
                a += v0 * w0[q + e];
                a += v1 * w1[q + e];
                a += v2 * w2[q + e];
                a += v3 * w3[q + e];
                g[q + e] = a;
            }
        }
    }
    for (; i < m; i++) {
        const float vi = v[i];
        const float *restrict wi = w[i];
        for (Py_ssize_t q = 0; q < 4 * quads; q += 4)
            for (int e = 0; e < 4; e++)
                g[q + e] += vi * wi[q + e];
    }
}

#define STACK_GATES 1024

static int run_boundary(const State *s, const Step *p)
{
    const Py_ssize_t n = s->n, E = s->E, S = s->S, H = s->H, W = s->W, k = p->k;
    const Py_ssize_t G = 4 * H, ws = 4 * H + 1, mass0 = S + 2 * H;
    const float *bias = p->w + (S + H) * ws;
    float stack[STACK_GATES], *g = stack;
    float stack_vals[STACK_GATES], *vals = stack_vals;
    const float *stack_rows[STACK_GATES], **rows = stack_rows;
    if (G > STACK_GATES || S + H > STACK_GATES) {
        g = (float *)PyMem_Malloc((size_t)(G + S + H) * sizeof(float));
        rows = (const float **)PyMem_Malloc((size_t)(S + H) * sizeof(float *));
        if (g == NULL || rows == NULL) {
            PyMem_Free(g);
            PyMem_Free(rows);
            PyErr_NoMemory();
            return -1;
        }
        vals = g + G;
    }
    for (Py_ssize_t r = 0; r < n; r++) {
        float *x = s->st + r * W;
        int64_t *pr = s->preds + r * E;
        float cf[3];
        confidence_row(p->logits + r * p->C, p->C, cf);
        pr[k] = (int64_t)argmax(p->logits + r * p->C, p->C);
        x[E] = x[mass0 + k];
        x[E + 1] = cf[0];
        x[E + 2] = cf[1];
        x[E + 3] = cf[2];
        Py_ssize_t same = 0;
        for (Py_ssize_t j = 0; j < k; j++)
            same += pr[j] == pr[k];
        x[E + 4] = k > 0 ? (float)((double)same / (double)k) : 0.0f;
        x[E + 5] = k > 0 && pr[k - 1] == pr[k] ? 1.0f : 0.0f;
        x[E + 6] = p->used[k];
        x[E + 7] = (float)((double)k / (double)(E - 1 > 1 ? E - 1 : 1));
        /* [x, h] @ W over the nonzero entries (st holds x then h, side by side), plus the bias */
        Py_ssize_t m = 0;
        for (Py_ssize_t i = 0; i < S + H; i++) {
            if (x[i] != 0.0f) {
                vals[m] = x[i];
                rows[m++] = p->w + i * ws;
            }
        }
        memcpy(g, bias, (size_t)G * sizeof(float));
        gemv4(g, vals, rows, m, H);
        double logit = bias[G];
        float *h = x + S, *c = x + S + H;
        for (Py_ssize_t j = 0; j < H; j++) {
            const double ig = 0.5 + 0.5 * tanh_fast(g[j]);
            const double fg = 0.5 + 0.5 * tanh_fast(g[H + j]);
            const double og = 0.5 + 0.5 * tanh_fast(g[2 * H + j]);
            const double cj = fg * (double)c[j] + ig * tanh_fast(g[3 * H + j]);
            const double hj = og * tanh_fast(cj);
            c[j] = (float)cj;
            h[j] = (float)hj;
            logit += hj * (double)p->w[(S + j) * ws + G];
        }
        p->stop[r] = logit > 0.0;
    }
    if (g != stack) {
        PyMem_Free(g);
        PyMem_Free(rows);
    }
    return 0;
}

static PyObject *py_boundary(PyObject *self, PyObject *args)
{
    Buf b[6];
    State s;
    Step p;
    Py_ssize_t k;
    (void)self;
    if (nargs(args, 7, "boundary") < 0)
        return NULL;
    memset(b, 0, sizeof(b));
    k = PyNumber_AsSsize_t(PyTuple_GET_ITEM(args, 0), PyExc_OverflowError);
    if (k == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "k: an int expected");
        return NULL;
    }
    if (take(PyTuple_GET_ITEM(args, 1), &b[0], "st", F32, 2, 1) < 0 ||
        take(PyTuple_GET_ITEM(args, 2), &b[1], "preds", I64, 2, 1) < 0 ||
        take(PyTuple_GET_ITEM(args, 3), &b[2], "logits", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 4), &b[3], "w", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 5), &b[4], "used", F32, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 6), &b[5], "stop", BOOL, 1, 1) < 0 ||
        state_shapes(&s, &b[0], &b[1]) < 0 ||
        step_shapes(&p, &s, k, &b[2], &b[3], &b[4], &b[5]) < 0 ||
        run_boundary(&s, &p) < 0)
        goto fail;
    release(b, 6);
    Py_RETURN_NONE;
fail:
    release(b, 6);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------------
 * confidence(logits, out) and features(pixels, mask, hidden, logits, weight, bias, eps, max_len, out): the
 * controller's inputs from a segment's outputs (edge_runtime.core.features), in double. */
static PyObject *py_confidence(PyObject *self, PyObject *args)
{
    Buf b[2];
    (void)self;
    if (nargs(args, 2, "confidence") < 0)
        return NULL;
    memset(b, 0, sizeof(b));
    if (take(PyTuple_GET_ITEM(args, 0), &b[0], "logits", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 1), &b[1], "out", F32, 2, 1) < 0)
        goto fail;
    if (dim(&b[0], 1) < 2) {
        shape_error("logits", "(n, classes) with at least two classes");
        goto fail;
    }
    if (dim(&b[1], 0) != dim(&b[0], 0) || dim(&b[1], 1) != 3) {
        shape_error("out", "(n, 3), n as logits'");
        goto fail;
    }
    for (Py_ssize_t r = 0; r < dim(&b[0], 0); r++)
        confidence_row((const float *)b[0].view.buf + r * dim(&b[0], 1), dim(&b[0], 1),
                       (float *)b[1].view.buf + r * 3);
    release(b, 2);
    Py_RETURN_NONE;
fail:
    release(b, 2);
    return NULL;
}

/* Sums of long runs, each with four accumulators: one chain of dependent adds would wait out the adder's
 * latency at every element (about 4x slower here). */
static double sum4(const float *x, Py_ssize_t count)
{
    double a[4] = {0.0, 0.0, 0.0, 0.0};
    Py_ssize_t i = 0;
    for (; i + 4 <= count; i += 4)
        for (int e = 0; e < 4; e++)
            a[e] += (double)x[i + e];
    for (; i < count; i++)
        a[0] += (double)x[i];
    return (a[0] + a[1]) + (a[2] + a[3]);
}

static double sqdev4(const float *x, Py_ssize_t count, double mean)
{
    double a[4] = {0.0, 0.0, 0.0, 0.0};
    Py_ssize_t i = 0;
    for (; i + 4 <= count; i += 4)
        for (int e = 0; e < 4; e++) {
            const double d = (double)x[i + e] - mean;
            a[e] += d * d;
        }
    for (; i < count; i++) {
        const double d = (double)x[i] - mean;
        a[0] += d * d;
    }
    return (a[0] + a[1]) + (a[2] + a[3]);
}

/* sum over i < count of |x[i + step] - x[i]| */
static double absdiff4(const float *x, Py_ssize_t count, Py_ssize_t step)
{
    double a[4] = {0.0, 0.0, 0.0, 0.0};
    Py_ssize_t i = 0;
    for (; i + 4 <= count; i += 4)
        for (int e = 0; e < 4; e++)
            a[e] += fabs((double)x[i + e + step] - (double)x[i + e]);
    for (; i < count; i++)
        a[0] += fabs((double)x[i + step] - (double)x[i]);
    return (a[0] + a[1]) + (a[2] + a[3]);
}

/* image_stats of one (C, H, W) image: mean, std, mean |dx| + mean |dy| */
static void image_row(const float *x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, float out[3])
{
    const Py_ssize_t count = C * H * W;
    const double mean = sum4(x, count) / (double)count;
    double dx = 0.0, dy = 0.0;
    for (Py_ssize_t c = 0; c < C; c++) {
        const float *p = x + c * H * W;
        for (Py_ssize_t i = 0; i < H && W > 1; i++)
            dx += absdiff4(p + i * W, W - 1, 1);
        if (H > 1)
            dy += absdiff4(p, (H - 1) * W, W);      /* row i + 1 minus row i, over the image at once */
    }
    out[0] = (float)mean;
    out[1] = (float)sqrt(sqdev4(x, count, mean) / (double)count);
    out[2] = (float)((W > 1 ? dx / (double)(C * H * (W - 1)) : 0.0) + (H > 1 ? dy / (double)(C * (H - 1) * W) : 0.0));
}

/* The feature inputs: 8 consecutive arguments pixels, mask, hidden, logits, weight, bias, eps, max_len, and
 * the output (n, 6 + P) float32. */
typedef struct {
    const float *pixels;        /* (n, C, H, W) or NULL */
    Py_ssize_t Cp, Hp, Wp;
    const int64_t *mask;        /* (n, T) or NULL */
    const float *hidden;        /* (n, T, Cw) */
    Py_ssize_t n, T, Cw;
    const float *logits;        /* (n, classes) */
    Py_ssize_t classes;
    const float *weight, *bias; /* (Cw, P), (P,) */
    Py_ssize_t P;
    double eps, max_len;
    float *out;                 /* (n, 6 + P) */
} Feat;

/* Parse args[at .. at + 7] into b[0..5] and f, and the output `out_obj` into b[6]. */
static int feature_args(PyObject *args, Py_ssize_t at, PyObject *out_obj, Buf *b, Feat *f)
{
    PyObject *pix = PyTuple_GET_ITEM(args, at), *mask = PyTuple_GET_ITEM(args, at + 1);
    memset(f, 0, sizeof(*f));
    f->eps = PyFloat_AsDouble(PyTuple_GET_ITEM(args, at + 6));
    if (!PyErr_Occurred())
        f->max_len = PyFloat_AsDouble(PyTuple_GET_ITEM(args, at + 7));
    if (PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "eps, max_len: numbers expected");
        return -1;
    }
    if ((pix == Py_None) == (mask == Py_None)) {
        PyErr_SetString(PyExc_TypeError, "pixels, mask: exactly one of them (images or text) expected");
        return -1;
    }
    if ((pix != Py_None && take(pix, &b[0], "pixels", F32, 4, 0) < 0) ||
        (mask != Py_None && take(mask, &b[1], "mask", I64, 2, 0) < 0) ||
        take(PyTuple_GET_ITEM(args, at + 2), &b[2], "hidden", F32, 3, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, at + 3), &b[3], "logits", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, at + 4), &b[4], "weight", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, at + 5), &b[5], "bias", F32, 1, 0) < 0 ||
        take(out_obj, &b[6], "features", F32, 2, 1) < 0)
        return -1;
    f->n = dim(&b[2], 0);
    f->T = dim(&b[2], 1);
    f->Cw = dim(&b[2], 2);
    f->P = dim(&b[4], 1);
    f->classes = dim(&b[3], 1);
    if (pix != Py_None) {
        f->Cp = dim(&b[0], 1);
        f->Hp = dim(&b[0], 2);
        f->Wp = dim(&b[0], 3);
        if (dim(&b[0], 0) != f->n || f->Cp * f->Hp * f->Wp < 1)
            return shape_error("pixels", "(n, C, H, W), n as hidden's, not empty");
        f->pixels = (const float *)b[0].view.buf;
    } else {
        if (dim(&b[1], 0) != f->n || dim(&b[1], 1) != f->T)
            return shape_error("mask", "(n, T), as hidden's first two axes");
        f->mask = (const int64_t *)b[1].view.buf;
    }
    if (f->T < 1 || f->Cw < 1)
        return shape_error("hidden", "(n, T, C) with tokens and width");
    if (dim(&b[3], 0) != f->n || f->classes < 2)
        return shape_error("logits", "(n, classes), n as hidden's, at least two classes");
    if (dim(&b[4], 0) != f->Cw || dim(&b[5], 0) != f->P)
        return dim(&b[4], 0) != f->Cw ? shape_error("weight", "(C, P) with C hidden's width")
                                      : shape_error("bias", "(P,), P as weight's columns");
    if (dim(&b[6], 0) != f->n || dim(&b[6], 1) != 6 + f->P)
        return shape_error("features", "(n, 6 + P)");
    f->hidden = (const float *)b[2].view.buf;
    f->logits = (const float *)b[3].view.buf;
    f->weight = (const float *)b[4].view.buf;
    f->bias = (const float *)b[5].view.buf;
    f->out = (float *)b[6].view.buf;
    return 0;
}

#define STACK_WIDTH 1024

static int run_features(const Feat *f)
{
    const Py_ssize_t T = f->T, Cw = f->Cw, P = f->P;
    double stack_acc[STACK_WIDTH], *acc = stack_acc;      /* the pooled vector (Cw), then the projection (P) */
    if (Cw + P > STACK_WIDTH && (acc = (double *)PyMem_Malloc((size_t)(Cw + P) * sizeof(double))) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t r = 0; r < f->n; r++) {
        float *o = f->out + r * (6 + P);
        const float *h = f->hidden + r * T * Cw;
        const int64_t *m = f->mask != NULL ? f->mask + r * T : NULL;
        double kept = 0.0;
        for (Py_ssize_t c = 0; c < Cw; c++)
            acc[c] = 0.0;
        for (Py_ssize_t t = 0; t < T; t++) {
            if (m != NULL && m[t] == 0)
                continue;
            kept += 1.0;
            for (Py_ssize_t c = 0; c < Cw; c++)
                acc[c] += h[t * Cw + c];
        }
        if (f->pixels != NULL) {
            image_row(f->pixels + r * f->Cp * f->Hp * f->Wp, f->Cp, f->Hp, f->Wp, o);
        } else {
            o[0] = (float)(kept / f->max_len);
            o[1] = o[2] = 0.0f;
        }
        confidence_row(f->logits + r * f->classes, f->classes, o + 3);
        /* the (masked) mean over tokens, normalised without affine, then @ weight + bias */
        const double count = kept > 1.0 ? kept : 1.0;
        double mu = 0.0, var = 0.0;
        for (Py_ssize_t c = 0; c < Cw; c++) {
            acc[c] /= count;
            mu += acc[c];
        }
        mu /= (double)Cw;
        for (Py_ssize_t c = 0; c < Cw; c++) {
            acc[c] -= mu;
            var += acc[c] * acc[c];
        }
        const double inv = 1.0 / sqrt(var / (double)Cw + f->eps);
        for (Py_ssize_t c = 0; c < Cw; c++)
            acc[c] = (double)(float)(acc[c] * inv);       /* the pooled vector, rounded as numpy's float32 */
        double *v = acc + Cw;                             /* P sums side by side: independent chains */
        for (Py_ssize_t j = 0; j < P; j++)
            v[j] = f->bias[j];
        for (Py_ssize_t c = 0; c < Cw; c++) {
            const double a = acc[c];
            const float *wc = f->weight + c * P;
            for (Py_ssize_t j = 0; j < P; j++)
                v[j] += a * (double)wc[j];
        }
        for (Py_ssize_t j = 0; j < P; j++)
            o[6 + j] = (float)v[j];
    }
    if (acc != stack_acc)
        PyMem_Free(acc);
    return 0;
}

static PyObject *py_features(PyObject *self, PyObject *args)
{
    Buf b[7];
    Feat f;
    (void)self;
    if (nargs(args, 9, "features") < 0)
        return NULL;
    memset(b, 0, sizeof(b));
    if (feature_args(args, 0, PyTuple_GET_ITEM(args, 8), b, &f) < 0 || run_features(&f) < 0) {
        release(b, 7);
        return NULL;
    }
    release(b, 7);
    Py_RETURN_NONE;
}

/* oneshot(pixels, mask, hidden, logits, weight, bias, eps, max_len, features, lam, nodes, nan_true, roots,
 *         softmax, plain, proba, target): the features, the forest into proba, and per row the exit
 *         argmax_d cumsum(proba)[d] - lam * plain[d] (the cumulative sum in float32, as numpy's) into target. */
static PyObject *py_oneshot(PyObject *self, PyObject *args)
{
    Buf b[14];
    Feat f;
    Forest fo;
    int softmax;
    (void)self;
    if (nargs(args, 17, "oneshot") < 0)
        return NULL;
    memset(b, 0, sizeof(b));
    if ((softmax = PyObject_IsTrue(PyTuple_GET_ITEM(args, 13))) < 0)
        return NULL;
    if (feature_args(args, 0, PyTuple_GET_ITEM(args, 8), b, &f) < 0 ||
        take(PyTuple_GET_ITEM(args, 9), &b[7], "lam", F32, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 10), &b[8], "nodes", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 11), &b[9], "nan_true", BOOL, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 12), &b[10], "roots", I64, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 14), &b[11], "plain", F64, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 15), &b[12], "proba", F32, 2, 1) < 0 ||
        take(PyTuple_GET_ITEM(args, 16), &b[13], "target", I64, 1, 1) < 0)
        goto fail;
    {
        const Py_ssize_t E = dim(&b[12], 1), n = f.n;
        if (dim(&b[7], 0) != n || dim(&b[13], 0) != n || dim(&b[11], 0) != E) {
            shape_error("lam, target, plain", "(n,), (n,) and (exits,), n as hidden's, exits as proba's");
            goto fail;
        }
        if (forest_shapes(&fo, &b[6], &b[8], &b[9], &b[10], &b[12], "proba", E) < 0 || run_features(&f) < 0)
            goto fail;
        fo.softmax = softmax;
        if (run_forest(&fo) < 0)
            goto fail;
        const float *lam = (const float *)b[7].view.buf, *proba = fo.out;
        const double *plain = (const double *)b[11].view.buf;
        int64_t *target = (int64_t *)b[13].view.buf;
        for (Py_ssize_t r = 0; r < n; r++) {
            float mass = 0.0f;
            double best = -INFINITY;
            int64_t at = 0;
            for (Py_ssize_t d = 0; d < E; d++) {
                mass += proba[r * E + d];
                const double score = (double)mass - (double)lam[r] * plain[d];
                if (score > best || d == 0) {
                    best = score;
                    at = (int64_t)d;
                }
            }
            target[r] = at;
        }
    }
    release(b, 14);
    Py_RETURN_NONE;
fail:
    release(b, 14);
    return NULL;
}

/* first_boundary(pixels, mask, hidden, logits, weight, bias, eps, max_len, features, lam, nodes, nan_true,
 *                roots, softmax, use_predictor, w, used, proba, st, preds, stop): the features, the forest into
 *                proba, start, then boundary 0, in one call after segment 0. */
static PyObject *py_first_boundary(PyObject *self, PyObject *args)
{
    Buf b[17];
    Feat f;
    Forest fo;
    State s;
    Step p;
    int softmax, use_predictor;
    (void)self;
    if (nargs(args, 21, "first_boundary") < 0)
        return NULL;
    memset(b, 0, sizeof(b));
    if ((softmax = PyObject_IsTrue(PyTuple_GET_ITEM(args, 13))) < 0 ||
        (use_predictor = PyObject_IsTrue(PyTuple_GET_ITEM(args, 14))) < 0)
        return NULL;
    if (feature_args(args, 0, PyTuple_GET_ITEM(args, 8), b, &f) < 0 ||
        take(PyTuple_GET_ITEM(args, 9), &b[7], "lam", F32, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 10), &b[8], "nodes", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 11), &b[9], "nan_true", BOOL, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 12), &b[10], "roots", I64, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 15), &b[11], "w", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 16), &b[12], "used", F32, 1, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 17), &b[13], "proba", F32, 2, 1) < 0 ||
        take(PyTuple_GET_ITEM(args, 18), &b[14], "st", F32, 2, 1) < 0 ||
        take(PyTuple_GET_ITEM(args, 19), &b[15], "preds", I64, 2, 1) < 0 ||
        take(PyTuple_GET_ITEM(args, 20), &b[16], "stop", BOOL, 1, 1) < 0 ||
        state_shapes(&s, &b[14], &b[15]) < 0)
        goto fail;
    if (f.n != s.n || dim(&b[7], 0) != s.n) {
        shape_error("hidden, lam", "n rows, as preds'");
        goto fail;
    }
    if (forest_shapes(&fo, &b[6], &b[8], &b[9], &b[10], &b[13], "proba", s.E) < 0 ||
        step_shapes(&p, &s, 0, &b[3], &b[11], &b[12], &b[16]) < 0 || run_features(&f) < 0)
        goto fail;
    fo.softmax = softmax;
    if (run_forest(&fo) < 0)
        goto fail;
    run_start(&s, fo.out, (const float *)b[7].view.buf, use_predictor);
    if (run_boundary(&s, &p) < 0)
        goto fail;
    release(b, 17);
    Py_RETURN_NONE;
fail:
    release(b, 17);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------------
 * top1(logits, index, score): per row the argmax (numpy's) and its softmax probability, in double. */
static PyObject *py_top1(PyObject *self, PyObject *args)
{
    Buf b[3];
    (void)self;
    if (nargs(args, 3, "top1") < 0)
        return NULL;
    memset(b, 0, sizeof(b));
    if (take(PyTuple_GET_ITEM(args, 0), &b[0], "logits", F32, 2, 0) < 0 ||
        take(PyTuple_GET_ITEM(args, 1), &b[1], "index", I64, 1, 1) < 0 ||
        take(PyTuple_GET_ITEM(args, 2), &b[2], "score", F64, 1, 1) < 0)
        goto fail;
    {
        const Py_ssize_t n = dim(&b[0], 0), C = dim(&b[0], 1);
        const float *logits = (const float *)b[0].view.buf;
        int64_t *index = (int64_t *)b[1].view.buf;
        double *score = (double *)b[2].view.buf;
        if (C < 1) {
            shape_error("logits", "(n, classes) with at least one class");
            goto fail;
        }
        if (dim(&b[1], 0) != n) {
            shape_error("index", "(n,), as logits");
            goto fail;
        }
        if (dim(&b[2], 0) != n) {
            shape_error("score", "(n,), as logits");
            goto fail;
        }
        for (Py_ssize_t r = 0; r < n; r++) {
            const float *v = logits + r * C;
            const Py_ssize_t i = argmax(v, C);
            const double top = v[i];
            double total = 0.0;
            for (Py_ssize_t c = 0; c < C; c++)
                total += exp((double)v[c] - top);
            index[r] = (int64_t)i;
            score[r] = exp((double)v[i] - top) / total;   /* exp(0) = 1 but NaN for an infinite top */
        }
    }
    release(b, 3);
    Py_RETURN_NONE;
fail:
    release(b, 3);
    return NULL;
}

static PyMethodDef methods[] = {
    {"forest", py_forest, METH_VARARGS,
     "forest(x, nodes, nan_true, roots, softmax, out): the tree ensemble's (n, classes) float32 scores of\n"
     "x (n, F) float32 into out, zeroed first; softmax per row when `softmax` is true."},
    {"start", py_start, METH_VARARGS,
     "start(proba, lam, use_predictor, st, preds): the policy's rollout state: zero-fills st (n, S + 2H + E)\n"
     "float32 and preds (n, E) int64, then writes the predictor's distribution and cumulative sum (when\n"
     "use_predictor) and log lambda."},
    {"boundary", py_boundary, METH_VARARGS,
     "boundary(k, st, preds, logits, w, used, stop): exit k's argmax into preds, its confidence and the other\n"
     "boundary columns of st, one LSTM step on st's h, c, and stop (n,) bool = actor logit > 0."},
    {"first_boundary", py_first_boundary, METH_VARARGS,
     "first_boundary(pixels, mask, hidden, logits, weight, bias, eps, max_len, features, lam, nodes, nan_true,\n"
     "roots, softmax, use_predictor, w, used, proba, st, preds, stop): features (as features()), the forest\n"
     "into proba, start, then boundary 0, in one call."},
    {"oneshot", py_oneshot, METH_VARARGS,
     "oneshot(pixels, mask, hidden, logits, weight, bias, eps, max_len, features, lam, nodes, nan_true, roots,\n"
     "softmax, plain, proba, target): features, the forest into proba, and target (n,) int64 = per row\n"
     "argmax_d cumsum(proba)[d] - lam * plain[d]."},
    {"confidence", py_confidence, METH_VARARGS,
     "confidence(logits, out): per row of logits (n, C >= 2) float32 its max probability, top-1 minus top-2\n"
     "probability and entropy / log(C) into out (n, 3) float32."},
    {"features", py_features, METH_VARARGS,
     "features(pixels, mask, hidden, logits, weight, bias, eps, max_len, out): the controller's features\n"
     "(n, 6 + P) float32 from segment 0's feed (pixels (n, C, H, W) float32, or for text mask (n, T) int64\n"
     "and pixels None), hidden_out (n, T, width), logits and the projection weight (width, P), bias (P,)."},
    {"top1", py_top1, METH_VARARGS,
     "top1(logits, index, score): per row of logits (n, C) float32 its argmax (the first on ties, the first\n"
     "NaN if any) into index (n,) int64 and that class's softmax probability into score (n,) float64."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "edge_runtime._kernels",
    "The device controller's compiled inner loops (tree walk, LSTM policy step, top-1); see _kernels.c.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void)
{
    return PyModule_Create(&module);
}
