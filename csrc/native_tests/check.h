// The native tests' check: a failed condition is printed with its place and a message and
// counted, and the run goes on, so one run reports every disagreement; main() returns
// finish_checks("…") as its exit status.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

namespace tsl_test {
inline int& failures() {
  static int count = 0;
  return count;
}

// Runs `body` in a child process; true when the child died by SIGABRT (the refusals of the
// host emulations, whose expected complaint on stderr is not a test failure).
template <class Body>
bool aborts(const Body& body) {
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    if (!std::freopen("/dev/null", "w", stderr)) _exit(2);
    body();
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

inline int finish_checks(const char* what) {
  if (failures()) {
    std::printf("%d check(s) failed\n", failures());
    return 1;
  }
  std::printf("all %s checks passed\n", what);
  return 0;
}
}  // namespace tsl_test

#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (!(cond)) {                                                \
      ++tsl_test::failures();                                     \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                   \
      std::printf("\n");                                          \
    }                                                             \
  } while (0)
