// Open MPI's environment before MPI starts, and coll/tuned's all-reduce algorithm forced on one duplicated
// communicator through MPI_T control variables.
#include "comm/open_mpi_settings.h"

#include <cstdlib>
#include <vector>

namespace ddprun::comm {

namespace {
// One control variable of the MPI library, found by name; absent when this MPI has no such variable.
class ControlVariable {
 public:
  explicit ControlVariable(const char* name) {
    int index = -1;
    if (!*name || MPI_T_cvar_get_index(name, &index) != MPI_SUCCESS) return;
    int count = 0;
    if (MPI_T_cvar_handle_alloc(index, nullptr, &handle_, &count) != MPI_SUCCESS || count != 1) return;
    char variable_name[256], description[16];
    int name_length = sizeof variable_name, description_length = sizeof description, verbosity, bind, scope;
    MPI_T_enum enumtype;
    MPI_T_cvar_get_info(index, variable_name, &name_length, &verbosity, &type_, &enumtype, description,
                        &description_length, &bind, &scope);
    writable_ = scope != MPI_T_SCOPE_CONSTANT && scope != MPI_T_SCOPE_READONLY;
    found_ = true;
  }
  ~ControlVariable() {
    if (found_) MPI_T_cvar_handle_free(&handle_);
  }
  ControlVariable(const ControlVariable&) = delete;
  ControlVariable& operator=(const ControlVariable&) = delete;

  bool found() const { return found_; }
  // The value as an int (MPI_INT, or MPI_C_BOOL / MPI_CHAR read into a byte); 0 when absent.
  int read_int() const {
    if (!found_) return 0;
    if (type_ == MPI_INT) {
      int value = 0;
      MPI_T_cvar_read(handle_, &value);
      return value;
    }
    unsigned char value[8] = {};
    MPI_T_cvar_read(handle_, value);
    return value[0];
  }
  // A string value ("" when absent or not a string).
  std::string read_string() const {
    if (!found_ || type_ != MPI_CHAR) return "";
    std::vector<char> text(4096, '\0');
    MPI_T_cvar_read(handle_, text.data());
    text.back() = '\0';
    return text.data();
  }
  bool write_int(int value) { return found_ && writable_ && MPI_T_cvar_write(handle_, &value) == MPI_SUCCESS; }

 private:
  MPI_T_cvar_handle handle_ = MPI_T_CVAR_HANDLE_NULL;
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
  bool found_ = false;
  bool writable_ = false;
};

// Why `algorithm` cannot be forced here, or "" when it can and is now forced for the next communicator created.
std::string force(ControlVariable& algorithm_variable, int algorithm) {
  ControlVariable dynamic_rules("coll_tuned_use_dynamic_rules");
  ControlVariable rules_file("coll_tuned_dynamic_rules_filename");
  if (!algorithm_variable.found() || !dynamic_rules.found())
    return "this MPI has no coll/tuned all-reduce choice (not Open MPI)";
  if (!dynamic_rules.read_int())
    return "coll_tuned_use_dynamic_rules is off: the program started MPI before ddprun; let ddprun start it, or "
           "set OMPI_MCA_coll_tuned_use_dynamic_rules=1";
  if (algorithm_variable.read_int() != 0) return "the user forced coll_tuned_allreduce_algorithm";
  if (!rules_file.read_string().empty()) return "the user gave coll_tuned_dynamic_rules_filename";
  if (!algorithm_variable.write_int(algorithm)) return "coll_tuned_allreduce_algorithm cannot be written";
  return "";
}
}  // namespace

void set_open_mpi_environment() {
  setenv("OMPI_MCA_mpi_yield_when_idle", "1", /*overwrite=*/0);
  setenv("OMPI_MCA_coll_tuned_use_dynamic_rules", "1", /*overwrite=*/0);
}

MPI_Comm duplicate_with_allreduce_algorithm(MPI_Comm parent, int algorithm, std::string* why_not) {
  int provided = 0;
  const bool tools = MPI_T_init_thread(MPI_THREAD_MULTIPLE, &provided) == MPI_SUCCESS;
  std::string reason = "the MPI tool interface did not start";
  MPI_Comm duplicate = MPI_COMM_NULL;
  {
    ControlVariable algorithm_variable(tools ? "coll_tuned_allreduce_algorithm" : "");
    if (tools) reason = force(algorithm_variable, algorithm);
    // Every rank must run the same algorithm: one rank that cannot makes them all keep Open MPI's decision.
    const int forced_here = reason.empty() ? 1 : 0;
    int forced_everywhere = 0;
    MPI_Allreduce(&forced_here, &forced_everywhere, 1, MPI_INT, MPI_MIN, parent);
    if (forced_everywhere) MPI_Comm_dup(parent, &duplicate);
    if (forced_here) algorithm_variable.write_int(0);  // other communicators keep Open MPI's own decision
    if (!forced_everywhere && reason.empty()) reason = "another rank cannot force it";
  }
  if (tools) MPI_T_finalize();
  *why_not = reason;
  return duplicate;
}

}  // namespace ddprun::comm
