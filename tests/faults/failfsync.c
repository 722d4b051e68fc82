/* LD_PRELOAD shim for the fault harness: while the file named by GREGOR_FAILFSYNC_FILE
 * exists, fsync/fdatasync/syncfs fail with EIO without syncing.  Nothing else changes.
 * Built by tests/faults/node.py with: cc -shared -fPIC -O2 -o failfsync.so failfsync.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int armed(void) {
    const char *path = getenv("GREGOR_FAILFSYNC_FILE");
    return path != NULL && access(path, F_OK) == 0;
}

int fsync(int fd) {
    static int (*real)(int);
    if (armed()) { errno = EIO; return -1; }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (armed()) { errno = EIO; return -1; }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}

int syncfs(int fd) {
    static int (*real)(int);
    if (armed()) { errno = EIO; return -1; }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    return real(fd);
}
