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

// A model file could not be read or written (`error_number`: the errno of the system call that failed), or is not a
// cf_cpp model (error_number 0).
class IoError : public std::runtime_error {
 public:
  explicit IoError(const std::string& what, int error_number = 0)
      : std::runtime_error(what), error_number(error_number) {}
  int error_number;
};

// A fit or refit stopped by its stop flag (Model::fit): the model is as it was before the call.
class Interrupted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace cf
