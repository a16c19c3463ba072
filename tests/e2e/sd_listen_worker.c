/* A worker that takes its socket the strict way, with libsystemd's own sd_listen_fds(): on
 * systemd 258 and later that compares LISTEN_PIDFDID with the worker's own pidfd too. It
 * answers every connection "sd_listen_fds=1" and says READY=1 with sd_notify(). libsystemd is
 * loaded at run time (dlopen), so the binary built on the test host needs no libsystemd-dev
 * and runs in every container. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    void *lib = dlopen("libsystemd.so.0", RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "dlopen libsystemd.so.0: %s\n", dlerror());
        return 1;
    }
    int (*listen_fds)(int) = (int (*)(int))dlsym(lib, "sd_listen_fds");
    int (*notify)(int, const char *) = (int (*)(int, const char *))dlsym(lib, "sd_notify");
    if (!listen_fds || !notify) {
        fprintf(stderr, "libsystemd lacks sd_listen_fds or sd_notify\n");
        return 1;
    }
    int n = listen_fds(0);
    if (n != 1) {
        fprintf(stderr, "sd_listen_fds() = %d: the socket is not for this process\n", n);
        return 1;
    }
    notify(0, "READY=1");
    static const char reply[] =
        "HTTP/1.0 200 OK\r\nContent-Length: 16\r\nConnection: close\r\n\r\nsd_listen_fds=1\n";
    for (;;) {
        int c = accept(3, NULL, NULL);
        if (c < 0)
            continue;
        char buf[1024];
        if (read(c, buf, sizeof buf) > 0 && write(c, reply, sizeof reply - 1) < 0)
            perror("write");
        close(c);
    }
}
