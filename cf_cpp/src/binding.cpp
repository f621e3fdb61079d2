// nanobind binding of the cf_cpp core. Arrays are borrowed without copies when they already have the expected dtype
// and layout (int64 indices, float64 values, C-contiguous); index arrays are never converted (a float array would be
// truncated), other arrays are. Paths are bytes (os.fsencode), so any file name the system allows is one. Heavy
// calls release the GIL. The Model's own lock (model.h) serialises what changes it against every other call on it,
// so overlapping calls wait, never crash; no lock is held while the GIL is taken back.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <future>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "cf_cpp/model.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using Index1 = nb::ndarray<const std::int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Value1 = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Matrix2 = nb::ndarray<const double, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Out2 = nb::ndarray<nb::numpy, double, nb::ndim<2>>;
const cf::Config kDefaults;  // the constructor's defaults are the core's

cf::Observations observations(const Index1& rows, const Index1& cols, const Value1& values) {
  if (rows.shape(0) != cols.shape(0) || rows.shape(0) != values.shape(0))
    throw cf::InvalidInput("rows, cols and values must have the same length, got " + std::to_string(rows.shape(0)) +
                           ", " + std::to_string(cols.shape(0)) + " and " + std::to_string(values.shape(0)));
  return cf::Observations{rows.data(), cols.data(), values.data(), rows.shape(0)};
}

std::optional<cf::Features> features(const std::optional<Matrix2>& f) {
  if (!f) return std::nullopt;
  return cf::Features{f->data(), static_cast<std::int64_t>(f->shape(0)), static_cast<std::int64_t>(f->shape(1))};
}

// A numpy array of `v`'s data (moved to the heap, freed with its owner capsule).
template <class T, std::size_t D>
nb::ndarray<nb::numpy, T, nb::ndim<D>> owned(std::vector<T>&& v, std::array<std::size_t, D> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T, nb::ndim<D>>(heap->data(), D, shape.data(), owner);
}

template <class T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> owned_1d(std::vector<T>&& v) {
  const std::size_t n = v.size();
  return owned<T, 1>(std::move(v), {n});
}

Out2 owned_2d(std::vector<double>&& v, std::size_t n0, std::size_t n1) { return owned<double, 2>(std::move(v), {n0, n1}); }

// What `read` returns, read with the GIL released: the model's accessors wait for its lock, which a fit, refit or
// fold-in in another thread holds meanwhile (other Python threads run on). Arrays are built after, with the GIL.
template <class F>
auto released(F&& read) {
  nb::gil_scoped_release release;
  return read();
}

// `call()` with the GIL released; running out of memory is a MemoryError saying for what (nanobind's own says only
// std::bad_alloc, and sizes are only refused up to kMaxDim, far beyond any machine's memory).
template <class F>
auto sized(const std::string& what, F&& call) {
  try {
    nb::gil_scoped_release release;
    return call();
  } catch (const std::bad_alloc&) {
    PyErr_SetString(PyExc_MemoryError, (what + ": out of memory").c_str());
    throw nb::python_error();
  }
}

// `call(stop)` (a fit or refit) on a thread of its own, the GIL released, while this thread looks at Python's signals
// every kSignalPoll: a handler that raises (Ctrl-C's KeyboardInterrupt) sets `stop`, which the core sees before its
// next solve, and its exception is raised here once `call` has ended, the model as it was (Ctrl-C had waited out a
// fit of minutes, review). Errors of `call` as in `sized`. A thread that cannot be started, or a call from a thread
// other than Python's main one (which never runs signal handlers): run here, unstoppable.
constexpr std::chrono::milliseconds kSignalPoll{50};

bool on_main_thread() {
  nb::module_ threading = nb::module_::import_("threading");
  return threading.attr("current_thread")().is(threading.attr("main_thread")());
}

template <class F>
void interruptible(const std::string& what, F&& call) {
  if (!on_main_thread()) {
    sized(what, [&] { call(nullptr); });
    return;
  }
  std::atomic<bool> stop{false};
  bool signalled = false;
  std::exception_ptr failure;
  {
    nb::gil_scoped_release release;
    try {
      std::future<void> done;
      try {
        done = std::async(std::launch::async, [&] { call(&stop); });
      } catch (const std::system_error&) {
        call(nullptr);
      }
      while (done.valid() && done.wait_for(kSignalPoll) != std::future_status::ready) {
        nb::gil_scoped_acquire acquire;
        if (PyErr_CheckSignals() != 0) {  // the handler's exception stays set, for below
          signalled = true;
          stop.store(true);
          break;
        }
      }
      if (done.valid()) done.get();
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (signalled) {
    if (failure) {
      try {
        std::rethrow_exception(failure);
      } catch (const cf::Interrupted&) {
      } catch (...) {  // failed otherwise meanwhile: the signal's exception is the one raised
      }
    }
    throw nb::python_error();
  }
  if (failure) sized(what, [&] { std::rethrow_exception(failure); });
}

// What a fit or refit is, for its out-of-memory message: with features, how many (a fit's per-row Grams of them
// take n_rows x (n_features + 1)^2 doubles, the most of its memory with many features: review).
std::string rows_by_cols(std::int64_t n_rows, std::int64_t n_cols, const std::optional<cf::Features>& f = {}) {
  auto size = [](std::int64_t n) { return n == cf::kUnchanged ? std::string("the current") : std::to_string(n); };
  const std::string features = f ? " of " + std::to_string(f->n_features) + " features" : "";
  return size(n_rows) + " rows x " + size(n_cols) + " columns" + features;
}

// The row or column parameters (n x d, row-major: bias and factors) and d.
std::pair<std::vector<double>, std::size_t> params_of(const cf::Model& s, std::vector<double> (cf::Model::*get)() const) {
  return {(s.*get)(), static_cast<std::size_t>(s.config().rank) + 1};
}

// Column j of a row-major n x d matrix.
std::vector<double> column(const std::vector<double>& m, std::size_t d, std::size_t j) {
  std::vector<double> out(m.size() / d);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = m[i * d + j];
  return out;
}

// Columns 1..d-1 of a row-major n x d matrix.
std::vector<double> factors(const std::vector<double>& m, std::size_t d) {
  std::vector<double> out;
  out.reserve(m.size() / d * (d - 1));
  for (std::size_t i = 0; i < m.size() / d; ++i) out.insert(out.end(), m.begin() + i * d + 1, m.begin() + (i + 1) * d);
  return out;
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "cf_cpp core: hybrid matrix factorisation (ALS in log space) with feature cold start.";
  nb::exception<cf::InvalidInput>(m, "InvalidInputError", PyExc_ValueError);
  static nb::exception<cf::IoError> model_file_error(m, "ModelFileError", PyExc_OSError);
  // With the errno of the call that failed, as OSError(errno, message): `e.errno` says ENOENT for a missing file.
  nb::register_exception_translator(
      [](const std::exception_ptr& p, void* type) {
        try {
          std::rethrow_exception(p);
        } catch (const cf::IoError& e) {
          if (e.error_number == 0) {
            PyErr_SetString(static_cast<PyObject*>(type), e.what());
            return;
          }
          nb::object args = nb::make_tuple(e.error_number, e.what());
          PyErr_SetObject(static_cast<PyObject*>(type), args.ptr());
        }
      },
      model_file_error.ptr());

  nb::class_<cf::Model>(m, "Model",
      "Matrix factorisation in log space with global mean, row/column biases and an optional column-feature prior.\n\n"
      "Predicts log y[r, c] = mu + b_r + b_c + p_r . q_c where [b_c, q_c] = Theta x_c + e_c: with column features\n"
      "x_c every column has a learned prior (cold start), and sparsely measured columns stay close to it.\n"
      "Fitted by alternating least squares, deterministic for a seed and independent of the thread count.")
      .def(
          "__init__",
          [](cf::Model* self, int rank, double reg, double reg_bias, double reg_col, double reg_col_bias,
             double reg_features, int iterations, std::uint64_t seed, int threads, double init_scale,
             bool kernel_residual) {
            cf::Config c;
            c.rank = rank;
            c.reg = reg;
            c.reg_bias = reg_bias;
            c.reg_col = reg_col;
            c.reg_col_bias = reg_col_bias;
            c.reg_features = reg_features;
            c.iterations = iterations;
            c.seed = seed;
            c.threads = threads;
            c.init_scale = init_scale;
            c.kernel_residual = kernel_residual;
            new (self) cf::Model(c);
          },
          "rank"_a = kDefaults.rank, "reg"_a = kDefaults.reg, "reg_bias"_a = kDefaults.reg_bias,
          "reg_col"_a = kDefaults.reg_col, "reg_col_bias"_a = kDefaults.reg_col_bias,
          "reg_features"_a = kDefaults.reg_features, "iterations"_a = kDefaults.iterations, "seed"_a = kDefaults.seed,
          "threads"_a = kDefaults.threads, "init_scale"_a = kDefaults.init_scale,
          "kernel_residual"_a = kDefaults.kernel_residual,
          "Create an unfitted model.\n\n"
          "rank: latent dimension (0 = biases (+ feature prior of the column bias) only).\n"
          "reg / reg_bias: ridge on row factors / row biases.\n"
          "reg_col / reg_col_bias: ridge pulling column factors / biases toward their feature prior (toward 0\n"
          "without features).\n"
          "reg_features: ridge on the feature map Theta.\n"
          "iterations: ALS sweeps. seed: initialisation seed. threads: worker threads (0 = all cores).\n"
          "kernel_residual: with column features, fit each row's training residuals by kernel ridge regression on\n"
          "the features (second-order polynomial kernel, ridge chosen per row on held-out entries).")
      .def(
          "fit",
          [](cf::Model& self, const Index1& rows, const Index1& cols, const Value1& values, std::int64_t n_rows,
             std::int64_t n_cols, const std::optional<Matrix2>& col_features,
             const std::optional<Matrix2>& additive_features) -> cf::Model& {
            cf::Observations obs = observations(rows, cols, values);
            std::optional<cf::Features> f = features(col_features), a = features(additive_features);
            interruptible("fit of " + rows_by_cols(n_rows, n_cols, f), [&](const std::atomic<bool>* stop) {
              self.fit(obs, n_rows, n_cols, f ? &*f : nullptr, a ? &*a : nullptr, stop);
            });
            return self;
          },
          "rows"_a.noconvert(), "cols"_a.noconvert(), "values"_a, "n_rows"_a, "n_cols"_a,
          "col_features"_a = nb::none(), "additive_features"_a = nb::none(), nb::rv_policy::reference,
          "Fit from scratch on observed entries (rows[i], cols[i]) -> values[i] (> 0, raw units).\n\n"
          "rows, cols: int64 C-contiguous arrays (not converted: another dtype or layout is a TypeError).\n"
          "col_features: optional float array (n_cols, n_features), e.g. log flops, log bytes, op counts.\n"
          "additive_features: optional float array (n_cols, n_additive) of raw quantities >= 0 that a device's value\n"
          "may be a weighted sum of (op counts, flops): a folded-in row may then be such a sum.\n"
          "Raises ValueError on out-of-range indices, non-positive / non-finite values or shape mismatches.\n"
          "Ctrl-C (in the main thread) stops it before its next solve: KeyboardInterrupt, the model as it was.\n"
          "Returns self.")
      .def(
          "refit",
          [](cf::Model& self, const Index1& rows, const Index1& cols, const Value1& values,
             std::optional<std::int64_t> n_rows, std::optional<std::int64_t> n_cols,
             const std::optional<Matrix2>& col_features, std::optional<int> iterations,
             const std::optional<Matrix2>& additive_features) -> cf::Model& {
            cf::Observations obs = observations(rows, cols, values);
            std::optional<cf::Features> f = features(col_features), a = features(additive_features);
            if (iterations && *iterations < 0)
              throw cf::InvalidInput("iterations must be >= 0, got " + std::to_string(*iterations));
            if ((n_rows && *n_rows < 0) || (n_cols && *n_cols < 0))
              throw cf::InvalidInput("n_rows and n_cols must be >= 0 (None: unchanged)");
            // None: the size the model has when the refit takes its lock (resolved there).
            std::int64_t nr = n_rows.value_or(cf::kUnchanged), nc = n_cols.value_or(cf::kUnchanged);
            interruptible("refit to " + rows_by_cols(nr, nc, f), [&](const std::atomic<bool>* stop) {
              self.refit(obs, nr, nc, f ? &*f : nullptr, iterations.value_or(-1), a ? &*a : nullptr, stop);
            });
            return self;
          },
          "rows"_a.noconvert(), "cols"_a.noconvert(), "values"_a, "n_rows"_a = nb::none(), "n_cols"_a = nb::none(),
          "col_features"_a = nb::none(), "iterations"_a = nb::none(), "additive_features"_a = nb::none(),
          nb::rv_policy::reference,
          "Refit on the full current data, warm-started from the current parameters (fewer iterations needed).\n\n"
          "n_rows / n_cols may grow (default: unchanged; an unfitted model needs them: it fits from scratch); new\n"
          "columns need col_features / additive_features when the model uses them; None keeps the current ones.\n"
          "iterations: >= 0 (default: the constructor's). Every row becomes a fitted row (none additive).\n"
          "Ctrl-C stops it as it stops fit. Returns self.")
      .def(
          "predict",
          [](const cf::Model& self, const Index1& rows, const Index1& cols, bool log) {
            if (rows.shape(0) != cols.shape(0))
              throw cf::InvalidInput("rows and cols must have the same length, got " + std::to_string(rows.shape(0)) +
                                     " and " + std::to_string(cols.shape(0)));
            std::vector<double> out(rows.shape(0));
            {
              nb::gil_scoped_release release;
              self.predict_log(rows.data(), cols.data(), out.size(), out.data());
              if (!log)
                for (double& v : out) v = std::exp(v);
            }
            return owned_1d(std::move(out));
          },
          "rows"_a.noconvert(), "cols"_a.noconvert(), "log"_a = false,
          "Predict entries (rows[i], cols[i]); raw units, or natural-log units with log=True.")
      .def(
          "predict_matrix",
          [](const cf::Model& self, bool log) {
            std::int64_t nr = 0, nc = 0;
            const std::string what = "predict_matrix of " + std::to_string(self.n_rows()) + " rows x " +
                                     std::to_string(self.n_cols()) + " columns";
            std::vector<double> out = sized(what, [&] {
              std::vector<double> m = self.predict_matrix_log(&nr, &nc);
              if (!log)
                for (double& v : m) v = std::exp(v);
              return m;
            });
            return owned_2d(std::move(out), static_cast<std::size_t>(nr), static_cast<std::size_t>(nc));
          },
          "log"_a = false, "The full (n_rows, n_cols) prediction matrix.")
      .def(
          "fold_in_row",
          [](cf::Model& self, const Index1& cols, const Value1& values) {
            if (cols.shape(0) != values.shape(0))
              throw cf::InvalidInput("cols and values must have the same length, got " + std::to_string(cols.shape(0)) +
                                     " and " + std::to_string(values.shape(0)));
            return sized("fold_in_row", [&] { return self.fold_in_row(cols.data(), values.data(), cols.shape(0)); });
          },
          "cols"_a.noconvert(), "values"_a,
          "Add a new row (e.g. a new device) from a few measurements against the fixed column model, no refit: a\n"
          "Bayesian fold-in whose prior is a mixture built from the fitted rows (one Gaussian around each, with a\n"
          "free offset and scale, and one around their mean), weighted by their evidence. With additive features\n"
          "the row is instead their weighted sum when that regression cross-validates far better on the entries.\n"
          "Returns the new row index.")
      .def(
          "add_cols",
          [](cf::Model& self, std::int64_t n, const std::optional<Matrix2>& col_features,
             const std::optional<Matrix2>& additive_features) {
            std::optional<cf::Features> f = features(col_features), a = features(additive_features);
            return sized("add_cols of " + std::to_string(n) + " columns",
                         [&] { return self.add_cols(n, f ? &*f : nullptr, a ? &*a : nullptr); });
          },
          "n"_a, "col_features"_a = nb::none(), "additive_features"_a = nb::none(),
          "Append n cold columns (e.g. new block signatures) predicted from their features (n, n_features) and\n"
          "their additive features (n, n_additive) when the model uses them. Returns the first new column index.")
      .def(
          "save",
          [](const cf::Model& self, const nb::bytes& path) {
            const std::string name(path.c_str(), path.size());
            nb::gil_scoped_release release;
            self.save(name);
          },
          "path"_a,
          "Save the fitted model to a binary file at path (bytes, os.fsencode). Raises OSError on I/O failure and\n"
          "ValueError for a model that load would refuse (non-finite parameters, predictions that could overflow).\n"
          "It is written to a temporary file next to path and renamed over it when complete: a failed save leaves\n"
          "the previous file. A symbolic link is saved through: its target is replaced, or created.")
      .def_static(
          "load",
          [](const nb::bytes& path) {
            const std::string name(path.c_str(), path.size());
            nb::gil_scoped_release release;
            return cf::Model::load(name);
          },
          "path"_a,
          "Load a model written by save() from path (bytes, os.fsencode). Raises OSError if the file is missing,\n"
          "damaged, not a cf_cpp model or too large for the memory.")
      .def_prop_ro("rank", [](const cf::Model& s) { return released([&] { return s.config().rank; }); },
                   "Latent dimension.")
      .def_prop_ro("is_fitted", [](const cf::Model& s) { return released([&] { return s.fitted(); }); },
                   "Whether fit() has run.")
      .def_prop_ro("n_rows", [](const cf::Model& s) { return released([&] { return s.n_rows(); }); },
                   "Number of rows (including folded-in rows).")
      .def_prop_ro("n_cols", [](const cf::Model& s) { return released([&] { return s.n_cols(); }); },
                   "Number of columns (including added cold columns).")
      .def_prop_ro("n_features", [](const cf::Model& s) { return released([&] { return s.n_features(); }); },
                   "Number of raw column features (0 without features).")
      .def_prop_ro("n_additive", [](const cf::Model& s) { return released([&] { return s.n_additive(); }); },
                   "Number of additive features (0 without).")
      .def_prop_ro(
          "additive_rows",
          [](const cf::Model& s) {
            const std::vector<std::vector<double>> weights = released([&] { return s.additive_rows(); });
            std::vector<std::int64_t> rows;
            for (std::size_t r = 0; r < weights.size(); ++r)
              if (!weights[r].empty()) rows.push_back(static_cast<std::int64_t>(r));
            return owned_1d(std::move(rows));
          },
          "Indices of the additive rows (folded-in rows predicted as a weighted sum of the additive features).",
          nb::rv_policy::move)
      .def_prop_ro("global_mean", [](const cf::Model& s) { return released([&] { return s.global_mean(); }); },
                   "Mean of the log training values.")
      .def_prop_ro(
          "row_biases",
          [](const cf::Model& s) {
            const auto [params, d] = released([&] { return params_of(s, &cf::Model::row_params); });
            return owned_1d(column(params, d, 0));
          },
          "Row biases b_r (copy).", nb::rv_policy::move)
      .def_prop_ro(
          "row_factors",
          [](const cf::Model& s) {
            const auto [params, d] = released([&] { return params_of(s, &cf::Model::row_params); });
            return owned_2d(factors(params, d), params.size() / d, d - 1);
          },
          "Row factors p_r, shape (n_rows, rank) (copy).", nb::rv_policy::move)
      .def_prop_ro(
          "col_biases",
          [](const cf::Model& s) {
            const auto [params, d] = released([&] { return params_of(s, &cf::Model::col_params); });
            return owned_1d(column(params, d, 0));
          },
          "Column biases b_c including the feature prior (copy).", nb::rv_policy::move)
      .def_prop_ro(
          "col_factors",
          [](const cf::Model& s) {
            const auto [params, d] = released([&] { return params_of(s, &cf::Model::col_params); });
            return owned_2d(factors(params, d), params.size() / d, d - 1);
          },
          "Column factors q_c including the feature prior, shape (n_cols, rank) (copy).", nb::rv_policy::move)
      .def_prop_ro(
          "col_counts", [](const cf::Model& s) { return owned_1d(released([&] { return s.col_counts(); })); },
          "Training observations per column (0 = cold column, predicted from features only).", nb::rv_policy::move)
      .def_prop_ro(
          "row_counts", [](const cf::Model& s) { return owned_1d(released([&] { return s.row_counts(); })); },
          "Training observations per row (0 = folded in since the last fit / refit, or unobserved).",
          nb::rv_policy::move)
      .def_prop_ro(
          "row_scales", [](const cf::Model& s) { return owned_1d(released([&] { return s.row_scales(); })); },
          "Per-row coefficient g_r of the column bias (1 for fitted rows; a folded-in row may differ) (copy).",
          nb::rv_policy::move)
      .def_prop_ro("noise_var", [](const cf::Model& s) { return released([&] { return s.noise_var(); }); },
                   "Mean squared training residual in log units (the observation noise of the fold-in).")
      .def_prop_ro(
          "row_residuals",
          [](const cf::Model& s) {
            std::int64_t nr = 0, nc = 0;
            std::vector<double> h = released([&] { return s.row_residuals(&nr, &nc); });
            if (h.empty()) h.assign(static_cast<std::size_t>(nr * nc), 0.0);
            return owned_2d(std::move(h), static_cast<std::size_t>(nr), static_cast<std::size_t>(nc));
          },
          "Each row's kernel residual h_r(c) in log units, shape (n_rows, n_cols) (zeros without; copy).",
          nb::rv_policy::move)
      .def("get_params",
           [](const cf::Model& s) {
             const cf::Config c = released([&] { return s.config(); });
             nb::dict d;
             d["rank"] = c.rank;
             d["reg"] = c.reg;
             d["reg_bias"] = c.reg_bias;
             d["reg_col"] = c.reg_col;
             d["reg_col_bias"] = c.reg_col_bias;
             d["reg_features"] = c.reg_features;
             d["iterations"] = c.iterations;
             d["seed"] = c.seed;
             d["threads"] = c.threads;
             d["init_scale"] = c.init_scale;
             d["kernel_residual"] = c.kernel_residual;
             return d;
           },
           "Constructor hyperparameters as a dict.")
      .def("__repr__", [](const cf::Model& s) {
        return released([&] {
          return "Model(rank=" + std::to_string(s.config().rank) + ", n_rows=" + std::to_string(s.n_rows()) +
                 ", n_cols=" + std::to_string(s.n_cols()) + ", n_features=" + std::to_string(s.n_features()) +
                 ", fitted=" + (s.fitted() ? "True" : "False") + ")";
        });
      });
}
