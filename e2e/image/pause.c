// The pause program of the omninode/pause image, containerd's sandbox image on the local
// node (there is no pause image offline). It holds the Pod's namespaces open: it waits for
// signals forever, reaps the zombies it inherits as PID 1 of a shared PID namespace, and
// exits 0 on SIGINT or SIGTERM. Built by e2e/image.sh: gcc -static -Os, stripped.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_terminate(int signo) {
  (void)signo;
  _exit(0);
}

static void on_child(int signo) {
  (void)signo;
  int saved_errno = errno;
  // One SIGCHLD can stand for several exited children: reap until none is left.
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved_errno;
}

static void handle(int signo, void (*handler)(int), int flags) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = handler;
  action.sa_flags = flags;
  sigemptyset(&action.sa_mask);
  if (sigaction(signo, &action, NULL) < 0) {
    perror("pause: sigaction");
    _exit(1);
  }
}

int main(int argc, char **argv) {
  (void)argv;
  if (argc > 1) {
    fputs("usage: pause (waits for SIGINT or SIGTERM, reaping children)\n", stderr);
    return 2;
  }
  handle(SIGINT, on_terminate, 0);
  handle(SIGTERM, on_terminate, 0);
  // SA_NOCLDSTOP: stopped children are not exited ones.
  handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART);
  for (;;) {
    pause();
  }
}
