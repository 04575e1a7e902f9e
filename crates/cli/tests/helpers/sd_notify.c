/* sd_notify(3) from inside a container, where busybox has no client: sends its arguments, one
 * per line, as one datagram to $NOTIFY_SOCKET (`sd-notify STATUS=up READY=1`), retrying for up
 * to 20 s while the socket is not bound yet. Built static by harden_e2e.rs (`cc -static`), so
 * it runs in a busybox rootfs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char msg[4096];
    size_t len = 0;
    if (argc < 2 || !path || strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "usage: NOTIFY_SOCKET=PATH sd-notify VAR=VALUE...\n");
        return 2;
    }
    strcpy(addr.sun_path, path);
    for (int i = 1; i < argc; i++) {
        int n = snprintf(msg + len, sizeof msg - len, "%s%s", i > 1 ? "\n" : "", argv[i]);
        if (n < 0 || (size_t)n >= sizeof msg - len) {
            fprintf(stderr, "sd-notify: message too long\n");
            return 2;
        }
        len += (size_t)n;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("sd-notify: socket");
        return 1;
    }
    for (int tries = 0; tries < 400; tries++) {
        if (sendto(fd, msg, len, 0, (struct sockaddr *)&addr, sizeof addr) >= 0)
            return 0;
        if (errno != ENOENT && errno != ECONNREFUSED)
            break;
        usleep(50 * 1000);
    }
    perror("sd-notify: sendto $NOTIFY_SOCKET");
    return 1;
}
