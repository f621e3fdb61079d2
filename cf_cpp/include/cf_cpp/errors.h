// Exceptions thrown by cf_cpp. The Python binding maps InvalidInput to ValueError and IoError to OSError, and raises
// the signal handler's exception (KeyboardInterrupt) for an Interrupted fit.
#pragma once

#include <stdexcept>
#include <string>

namespace cf {

// Bad arguments: shapes, out-of-range indices, non-positive or non-finite values, unfitted model.
class InvalidInput : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A model file could not be read or written, or is not a cf_cpp model.
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A fit or refit stopped by its stop flag (Model::fit): the model is as it was before the call.
class Interrupted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace cf
