/*
 * Power-loss shim for backuphub's crash tests (LD_PRELOAD). See tests/crash_power_loss.rs.
 *
 * It follows every call that changes the file system below the directories in
 * POWERLOSS_ROOTS and keeps a model of what a disk would still hold after a power cut:
 *
 *   - a file's content as of its last fsync/fdatasync (a copy under POWERLOSS_SHADOW),
 *     or empty if it was never synced during this process;
 *   - a directory's entries as of its last fsync (name -> file object).
 *
 * Whatever existed when the process started counts as durable (it was written by earlier
 * runs, which the test treats as a clean shutdown). At the POWERLOSS_CUT-th mutating call
 * (counted before the call is made; every thread's calls are serialized by one mutex, so
 * no call is half done) the shim either
 *   - "loses power" (POWERLOSS_MODE=power): rewrites the roots to the durable state and
 *     _exit(137)s, or
 *   - SIGKILLs its own process (POWERLOSS_MODE=kill): the page cache survives, nothing
 *     is rolled back; a deterministic replacement for killing after a sleep.
 *
 * Two durable-state models, both legal outcomes of a power cut on a POSIX file system:
 *   POWERLOSS_METADATA=fsynced  directory changes not followed by an fsync of the directory
 *                               are undone (new names vanish, renames and unlinks revert);
 *   POWERLOSS_METADATA=all      every directory change survives (a journaling file system
 *                               that committed its metadata) but file contents still fall
 *                               back to their last fsync: the zero-length-file-after-rename
 *                               case of ext4's writeback mode.
 *
 * POWERLOSS_VOLATILE (":"-separated paths) marks entries present at the start as not yet
 * durable, as an earlier run that was killed between a mkdir and its fsync leaves them.
 *
 * POWERLOSS_CUT=0 never cuts during the run; POWERLOSS_AT_EXIT=1 then loses power right
 * after the process finished (keeping its exit status), so the test can check that what
 * a finished command reported is durable. The shim appends one line to POWERLOSS_REPORT:
 *   calls=<mutating calls seen> fired=<mid|exit|none> status=<exit status or 137>
 *   untracked=<changes below a root the model could not follow>
 *
 * Limits, on purpose: no torn writes inside one write() call, no reordering of the data of
 * one file (it is the last fsync or nothing), no mmap writes (backuphub and sled use none).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_ROOTS 4

struct dent {
    char *name;
    int obj;
};

struct obj {
    dev_t dev;
    ino_t ino;
    mode_t mode;
    int is_dir;
    int live;   /* still the object behind (dev, ino) */
    /* files: 0 no durable content (empty), 1 shadow is a hard link to the untouched live
     * inode, 2 shadow is a copy of the content at the last fsync */
    int shadow;
    struct dent *ents; /* directories: durable entries */
    size_t nents;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int enabled;
static int mode_kill;
static int keep_metadata;
static int at_exit_cut;
static unsigned long cut_at;
static unsigned long calls;
static unsigned long untracked;
static char shadow_dir[PATH_MAX - 64];
static char report_path[PATH_MAX];
static char roots[MAX_ROOTS][PATH_MAX];
static int root_obj[MAX_ROOTS];
static int nroots;
static struct obj *objs;
static int nobjs, capobjs;

/* The real functions. */
static int (*r_open)(const char *, int, ...);
static int (*r_open64)(const char *, int, ...);
static int (*r_openat)(int, const char *, int, ...);
static int (*r_openat64)(int, const char *, int, ...);
static int (*r_creat)(const char *, mode_t);
static int (*r_creat64)(const char *, mode_t);
static ssize_t (*r_write)(int, const void *, size_t);
static ssize_t (*r_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*r_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*r_writev)(int, const struct iovec *, int);
static ssize_t (*r_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*r_pwritev64)(int, const struct iovec *, int, off64_t);
static ssize_t (*r_pwritev2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*r_pwritev64v2)(int, const struct iovec *, int, off64_t, int);
static int (*r_ftruncate)(int, off_t);
static int (*r_ftruncate64)(int, off64_t);
static int (*r_truncate)(const char *, off_t);
static int (*r_truncate64)(const char *, off64_t);
static int (*r_fallocate)(int, int, off_t, off_t);
static int (*r_fallocate64)(int, int, off64_t, off64_t);
static int (*r_posix_fallocate)(int, off_t, off_t);
static int (*r_posix_fallocate64)(int, off64_t, off64_t);
static ssize_t (*r_copy_file_range)(int, off64_t *, int, off64_t *, size_t, unsigned int);
static ssize_t (*r_sendfile)(int, int, off_t *, size_t);
static ssize_t (*r_sendfile64)(int, int, off64_t *, size_t);
static int (*r_fsync)(int);
static int (*r_fdatasync)(int);
static int (*r_sync_file_range)(int, off64_t, off64_t, unsigned int);
static int (*r_syncfs)(int);
static void (*r_sync)(void);
static int (*r_rename)(const char *, const char *);
static int (*r_renameat)(int, const char *, int, const char *);
static int (*r_renameat2)(int, const char *, int, const char *, unsigned int);
static int (*r_unlink)(const char *);
static int (*r_unlinkat)(int, const char *, int);
static int (*r_rmdir)(const char *);
static int (*r_remove)(const char *);
static int (*r_mkdir)(const char *, mode_t);
static int (*r_mkdirat)(int, const char *, mode_t);
static int (*r_link)(const char *, const char *);
static int (*r_linkat)(int, const char *, int, const char *, int);
static int (*r_symlink)(const char *, const char *);
static int (*r_symlinkat)(const char *, int, const char *);
static int (*r_mknod)(const char *, mode_t, dev_t);
static int (*r_mknodat)(int, const char *, mode_t, dev_t);

static void die(const char *what) {
    char buf[512];
    int n = snprintf(buf, sizeof buf, "powerloss shim: %s: %s\n", what, strerror(errno));
    if (n > 0)
        (void)!r_write(2, buf, (size_t)n);
    _exit(99);
}

#define RESOLVE(name)                                                                      \
    do {                                                                                   \
        if (!r_##name)                                                                     \
            r_##name = dlsym(RTLD_NEXT, #name);                                            \
    } while (0)

static void resolve_all(void) {
    RESOLVE(open); RESOLVE(open64); RESOLVE(openat); RESOLVE(openat64); RESOLVE(creat);
    RESOLVE(creat64); RESOLVE(write); RESOLVE(pwrite); RESOLVE(pwrite64); RESOLVE(writev);
    RESOLVE(pwritev); RESOLVE(pwritev64); RESOLVE(pwritev2); RESOLVE(pwritev64v2);
    RESOLVE(ftruncate); RESOLVE(ftruncate64); RESOLVE(truncate); RESOLVE(truncate64);
    RESOLVE(fallocate); RESOLVE(fallocate64); RESOLVE(posix_fallocate);
    RESOLVE(posix_fallocate64); RESOLVE(copy_file_range); RESOLVE(sendfile);
    RESOLVE(sendfile64); RESOLVE(fsync); RESOLVE(fdatasync); RESOLVE(sync_file_range);
    RESOLVE(syncfs); RESOLVE(sync); RESOLVE(rename); RESOLVE(renameat); RESOLVE(renameat2);
    RESOLVE(unlink); RESOLVE(unlinkat); RESOLVE(rmdir); RESOLVE(remove); RESOLVE(mkdir);
    RESOLVE(mkdirat); RESOLVE(link); RESOLVE(linkat); RESOLVE(symlink); RESOLVE(symlinkat);
    RESOLVE(mknod); RESOLVE(mknodat);
}

/* ---------------------------------------------------------------- the object table */

static int find_obj(dev_t dev, ino_t ino) {
    for (int i = nobjs - 1; i >= 0; i--)
        if (objs[i].live && objs[i].dev == dev && objs[i].ino == ino)
            return i;
    return -1;
}

static int new_obj(const struct stat *st) {
    int old = find_obj(st->st_dev, st->st_ino);
    if (old >= 0)
        objs[old].live = 0; /* the inode number was freed and reused */
    if (nobjs == capobjs) {
        capobjs = capobjs ? capobjs * 2 : 256;
        objs = realloc(objs, sizeof *objs * (size_t)capobjs);
        if (!objs)
            die("out of memory");
    }
    struct obj *o = &objs[nobjs];
    memset(o, 0, sizeof *o);
    o->dev = st->st_dev;
    o->ino = st->st_ino;
    o->mode = st->st_mode & 07777;
    o->is_dir = S_ISDIR(st->st_mode);
    o->live = 1;
    return nobjs++;
}

static void shadow_path(int obj, char *out) {
    snprintf(out, PATH_MAX, "%s/o%d", shadow_dir, obj);
}

static void copy_fd(int from, int to) {
    static char buf[1 << 16];
    for (;;) {
        ssize_t n = read(from, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("read for a shadow copy");
        if (n == 0)
            return;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = r_write(to, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                die("write of a shadow copy");
            off += w;
        }
    }
}

/* Replaces the object's shadow with a copy of what `src_fd` (read from offset 0) holds. */
static void snapshot_content(int obj, int src_fd) {
    char dst[PATH_MAX], tmp[PATH_MAX + 8];
    shadow_path(obj, dst);
    snprintf(tmp, sizeof tmp, "%s.new", dst);
    int out = r_open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0)
        die("create shadow copy");
    if (lseek(src_fd, 0, SEEK_SET) < 0)
        die("seek for a shadow copy");
    copy_fd(src_fd, out);
    close(out);
    if (r_rename(tmp, dst) < 0)
        die("rename shadow copy");
    objs[obj].shadow = 2;
}

/* A readable descriptor for the file behind `fd` (which may be write-only). */
static int reopen_ro(int fd) {
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    int r = r_open(p, O_RDONLY | O_CLOEXEC);
    if (r < 0)
        die("reopen for a shadow copy");
    return r;
}

/* Before the live inode of a pristine object changes, its shadow (a hard link to that very
 * inode) must become a copy of its own. */
static void unshare_obj(int obj) {
    if (obj < 0 || objs[obj].is_dir || objs[obj].shadow != 1)
        return;
    char sp[PATH_MAX];
    shadow_path(obj, sp);
    int in = r_open(sp, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        die("open pristine shadow");
    char old[PATH_MAX + 8];
    snprintf(old, sizeof old, "%s.old", sp);
    /* Move the link aside first so the copy gets a new inode. */
    if (r_rename(sp, old) < 0)
        die("rename pristine shadow");
    snapshot_content(obj, in);
    close(in);
    r_unlink(old);
}

static void free_ents(struct obj *o) {
    for (size_t i = 0; i < o->nents; i++)
        free(o->ents[i].name);
    free(o->ents);
    o->ents = NULL;
    o->nents = 0;
}

static int track_new_entry(int dfd, const char *name, int assume_durable);
static int scanning;
static char *volatile_list; /* ":"-separated paths, each between colons */

/* POWERLOSS_VOLATILE names entries that exist when the process starts but whose names were
 * never made durable: the leftovers of an earlier run that was killed before its fsync. */
static int is_volatile(int dfd, const char *name) {
    if (!volatile_list)
        return 0;
    char link[64], dir[PATH_MAX], full[PATH_MAX + 512];
    snprintf(link, sizeof link, "/proc/self/fd/%d", dfd);
    ssize_t n = readlink(link, dir, sizeof dir - 1);
    if (n < 0)
        return 0;
    dir[n] = 0;
    snprintf(full, sizeof full, ":%s/%s:", dir, name);
    return strstr(volatile_list, full) != NULL;
}

/* Records the directory's current entries as its durable ones. */
static void capture_dir(int obj, int dfd) {
    int fd = r_openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        die("open directory to capture it");
    DIR *d = fdopendir(fd);
    if (!d)
        die("fdopendir");
    struct dent *ents = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        int child = find_obj(st.st_dev, st.st_ino);
        if (child < 0) {
            if (!scanning)
                untracked++; /* made by a call the shim does not follow */
            child = track_new_entry(dirfd(d), e->d_name, 1);
            if (child < 0)
                continue;
        }
        if (scanning && is_volatile(dirfd(d), e->d_name))
            continue; /* exists, but a power cut would take its name away */
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            ents = realloc(ents, sizeof *ents * cap);
            if (!ents)
                die("out of memory");
        }
        ents[n].name = strdup(e->d_name);
        ents[n].obj = child;
        n++;
    }
    closedir(d);
    free_ents(&objs[obj]);
    objs[obj].ents = ents;
    objs[obj].nents = n;
}

/* Adds an object for an entry found below a root. `assume_durable`: its current content
 * counts as durable (pre-existing files), linked into the shadow directory so that it
 * survives unlinks and is copied before any in-place change. Directories are scanned. */
static int track_new_entry(int dfd, const char *name, int assume_durable) {
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return -1;
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
        untracked++;
        return -1;
    }
    int o = new_obj(&st);
    if (objs[o].is_dir) {
        int fd = r_openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            die("open directory to scan it");
        if (assume_durable)
            capture_dir(o, fd);
        close(fd);
    } else if (assume_durable) {
        char sp[PATH_MAX];
        shadow_path(o, sp);
        if (r_linkat(dfd, name, AT_FDCWD, sp, 0) == 0) {
            objs[o].shadow = 1;
        } else {
            int in = r_openat(dfd, name, O_RDONLY | O_CLOEXEC);
            if (in < 0)
                die("open file to copy it");
            snapshot_content(o, in);
            close(in);
        }
    }
    return o;
}

/* ---------------------------------------------------------------- losing power */

static void rm_children(int dfd) {
    int fd = r_openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        die("open directory to empty it");
    DIR *d = fdopendir(fd);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            int sub = r_openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (sub < 0)
                die("open subdirectory to empty it");
            rm_children(sub);
            close(sub);
            if (r_unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR) < 0)
                die("rmdir");
        } else if (r_unlinkat(dirfd(d), e->d_name, 0) < 0) {
            die("unlink");
        }
    }
    closedir(d);
}

/* Writes the durable state of directory object `obj` into the (empty) directory `dfd`. */
static void build(int obj, int dfd, int depth) {
    if (depth > 64)
        return; /* a cycle of undone directory renames */
    for (size_t i = 0; i < objs[obj].nents; i++) {
        const char *name = objs[obj].ents[i].name;
        int c = objs[obj].ents[i].obj;
        if (objs[c].is_dir) {
            if (r_mkdirat(dfd, name, objs[c].mode) < 0)
                die("mkdir while restoring");
            int sub = r_openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (sub < 0)
                die("open while restoring");
            build(c, sub, depth + 1);
            close(sub);
            continue;
        }
        char sp[PATH_MAX];
        shadow_path(c, sp);
        if (objs[c].shadow && r_linkat(AT_FDCWD, sp, dfd, name, 0) == 0)
            continue;
        int out = r_openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, objs[c].mode);
        if (out < 0)
            die("create while restoring");
        if (objs[c].shadow) {
            int in = r_open(sp, O_RDONLY | O_CLOEXEC);
            if (in < 0)
                die("open shadow while restoring");
            copy_fd(in, out);
            close(in);
        }
        close(out);
    }
}

/* POWERLOSS_METADATA=all: keep the names, put back each file's durable content. */
static void revert_contents(int dfd, int depth) {
    if (depth > 64)
        return;
    int fd = r_openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        die("open directory to revert it");
    DIR *d = fdopendir(fd);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            int sub = r_openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (sub < 0)
                die("open subdirectory to revert it");
            revert_contents(sub, depth + 1);
            close(sub);
            continue;
        }
        int o = find_obj(st.st_dev, st.st_ino);
        if (o < 0 || objs[o].shadow == 1)
            continue; /* untouched since the process started */
        int out = r_openat(dirfd(d), e->d_name, O_WRONLY | O_TRUNC | O_CLOEXEC);
        if (out < 0)
            die("truncate while reverting");
        if (objs[o].shadow == 2) {
            char sp[PATH_MAX];
            shadow_path(o, sp);
            int in = r_open(sp, O_RDONLY | O_CLOEXEC);
            if (in < 0)
                die("open shadow while reverting");
            copy_fd(in, out);
            close(in);
        }
        close(out);
    }
    closedir(d);
}

static void report(const char *fired, int status) {
    if (!report_path[0])
        return;
    char buf[256];
    int n = snprintf(buf, sizeof buf, "calls=%lu fired=%s status=%d untracked=%lu\n", calls,
                     fired, status, untracked);
    int fd = r_open(report_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        die("open report");
    (void)!r_write(fd, buf, (size_t)n);
    r_fsync(fd);
    close(fd);
}

/* Called with `mu` held, which is never released: no other thread changes anything after. */
static void lose_power(void) {
    for (int r = 0; r < nroots; r++) {
        int rootfd = r_open(roots[r], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (rootfd < 0)
            die("open root");
        if (keep_metadata) {
            revert_contents(rootfd, 0);
        } else {
            rm_children(rootfd);
            build(root_obj[r], rootfd, 0);
        }
        close(rootfd);
    }
}

/* Counts one mutating call; at the chosen one, cuts. Called with `mu` held. */
static void tick(void) {
    calls++;
    if (cut_at == 0 || calls != cut_at)
        return;
    if (mode_kill) {
        report("mid", 137);
        kill(getpid(), SIGKILL);
        for (;;)
            pause();
    }
    lose_power();
    report("mid", 137);
    _exit(137);
}

static void on_exit_handler(int status, void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    if (at_exit_cut && !mode_kill) {
        /* `mu` stays held: threads still running cannot change anything any more. */
        lose_power();
        report("exit", status);
        return;
    }
    report("none", status);
    pthread_mutex_unlock(&mu);
}

__attribute__((constructor)) static void init(void) {
    resolve_all();
    const char *r = getenv("POWERLOSS_ROOTS");
    const char *s = getenv("POWERLOSS_SHADOW");
    if (!r || !s)
        return;
    snprintf(shadow_dir, sizeof shadow_dir, "%s", s);
    const char *rep = getenv("POWERLOSS_REPORT");
    if (rep)
        snprintf(report_path, sizeof report_path, "%s", rep);
    const char *c = getenv("POWERLOSS_CUT");
    cut_at = c ? strtoul(c, NULL, 10) : 0;
    const char *m = getenv("POWERLOSS_MODE");
    mode_kill = m && !strcmp(m, "kill");
    const char *md = getenv("POWERLOSS_METADATA");
    keep_metadata = md && !strcmp(md, "all");
    const char *vol = getenv("POWERLOSS_VOLATILE");
    if (vol && *vol) {
        size_t n = strlen(vol) + 3;
        volatile_list = malloc(n);
        if (!volatile_list)
            die("out of memory");
        snprintf(volatile_list, n, ":%s:", vol);
    }
    const char *ae = getenv("POWERLOSS_AT_EXIT");
    at_exit_cut = ae && !strcmp(ae, "1");
    char list[MAX_ROOTS * PATH_MAX];
    snprintf(list, sizeof list, "%s", r);
    for (char *save = NULL, *tok = strtok_r(list, ":", &save); tok && nroots < MAX_ROOTS;
         tok = strtok_r(NULL, ":", &save)) {
        snprintf(roots[nroots], PATH_MAX, "%s", tok);
        struct stat st;
        if (stat(tok, &st) < 0 || !S_ISDIR(st.st_mode))
            die("POWERLOSS_ROOTS names a missing directory");
        /* The root itself is durable (a mount point); its entries are scanned. */
        scanning = 1;
        root_obj[nroots] = track_new_entry(AT_FDCWD, tok, 1);
        scanning = 0;
        nroots++;
    }
    /* Children (the --command producers) must not inherit the cut. */
    unsetenv("LD_PRELOAD");
    on_exit(on_exit_handler, NULL);
    enabled = 1;
}

/* ---------------------------------------------------------------- helpers for the hooks */

/* The object of the directory that holds `path` (relative to `dfd`), or -1. */
static int parent_obj(int dfd, const char *path) {
    char buf[PATH_MAX];
    size_t len = strnlen(path, PATH_MAX - 1);
    memcpy(buf, path, len);
    buf[len] = 0;
    while (len > 1 && buf[len - 1] == '/')
        buf[--len] = 0;
    char *slash = strrchr(buf, '/');
    const char *dir;
    if (!slash)
        dir = ".";
    else if (slash == buf) {
        buf[1] = 0;
        dir = buf;
    } else {
        *slash = 0;
        dir = buf;
    }
    struct stat st;
    if (fstatat(dfd, dir, &st, 0) < 0)
        return -1;
    int o = find_obj(st.st_dev, st.st_ino);
    return (o >= 0 && objs[o].is_dir) ? o : -1;
}

/* Takes `mu` and returns 1 if the call concerns a root; otherwise returns 0 unlocked. */
static int begin_path(int dfd, const char *path) {
    if (!enabled || !path)
        return 0;
    pthread_mutex_lock(&mu);
    if (parent_obj(dfd, path) >= 0)
        return 1;
    pthread_mutex_unlock(&mu);
    return 0;
}

static int begin_fd(int fd, int *obj) {
    if (!enabled)
        return 0;
    struct stat st;
    if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)))
        return 0; /* pipes, terminals, sockets: never locked */
    pthread_mutex_lock(&mu);
    *obj = find_obj(st.st_dev, st.st_ino);
    if (*obj >= 0)
        return 1;
    pthread_mutex_unlock(&mu);
    return 0;
}

#define END() pthread_mutex_unlock(&mu)

/* ---------------------------------------------------------------- hooks: opening */

static int do_open(int dfd, const char *path, int flags, mode_t mode,
                   int (*real)(int, const char *, int, ...)) {
    if (!(flags & (O_CREAT | O_TRUNC)) || !begin_path(dfd, path))
        return real(dfd, path, flags, mode);
    int saved = errno;
    tick();
    struct stat before;
    int existed = fstatat(dfd, path, &before, 0) == 0;
    if (existed && (flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY)
        unshare_obj(find_obj(before.st_dev, before.st_ino));
    errno = saved;
    int fd = real(dfd, path, flags, mode);
    if (fd >= 0) {
        saved = errno;
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
            (!existed || find_obj(st.st_dev, st.st_ino) < 0)) {
            if (existed)
                untracked++; /* an old file the model never saw */
            new_obj(&st);
        }
        errno = saved;
    }
    END();
    return fd;
}

static mode_t va_mode(int flags, va_list ap) {
    return (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t m = va_mode(flags, ap);
    va_end(ap);
    RESOLVE(openat);
    return do_open(AT_FDCWD, path, flags, m, r_openat);
}
int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t m = va_mode(flags, ap);
    va_end(ap);
    RESOLVE(openat64);
    return do_open(AT_FDCWD, path, flags, m, r_openat64);
}
int openat(int dfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t m = va_mode(flags, ap);
    va_end(ap);
    RESOLVE(openat);
    return do_open(dfd, path, flags, m, r_openat);
}
int openat64(int dfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t m = va_mode(flags, ap);
    va_end(ap);
    RESOLVE(openat64);
    return do_open(dfd, path, flags, m, r_openat64);
}
int __open_2(const char *path, int flags) { return open(path, flags); }
int __open64_2(const char *path, int flags) { return open64(path, flags); }
int __openat_2(int dfd, const char *path, int flags) { return openat(dfd, path, flags); }
int __openat64_2(int dfd, const char *path, int flags) {
    return openat64(dfd, path, flags);
}
int creat(const char *path, mode_t mode) {
    return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}
int creat64(const char *path, mode_t mode) {
    return open64(path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

/* ---------------------------------------------------------------- hooks: writing */

/* Every in-place change of a file's bytes or size. */
#define MODIFY(fd, call)                                                                   \
    do {                                                                                   \
        int o_;                                                                            \
        if (!begin_fd(fd, &o_))                                                            \
            return call;                                                                   \
        int saved_ = errno;                                                                \
        tick();                                                                            \
        unshare_obj(o_);                                                                       \
        errno = saved_;                                                                    \
        __typeof__(call) r_ = call;                                                        \
        END();                                                                             \
        return r_;                                                                         \
    } while (0)

ssize_t write(int fd, const void *b, size_t n) { RESOLVE(write); MODIFY(fd, r_write(fd, b, n)); }
ssize_t pwrite(int fd, const void *b, size_t n, off_t o) {
    RESOLVE(pwrite);
    MODIFY(fd, r_pwrite(fd, b, n, o));
}
ssize_t pwrite64(int fd, const void *b, size_t n, off64_t o) {
    RESOLVE(pwrite64);
    MODIFY(fd, r_pwrite64(fd, b, n, o));
}
ssize_t writev(int fd, const struct iovec *v, int c) {
    RESOLVE(writev);
    MODIFY(fd, r_writev(fd, v, c));
}
ssize_t pwritev(int fd, const struct iovec *v, int c, off_t o) {
    RESOLVE(pwritev);
    MODIFY(fd, r_pwritev(fd, v, c, o));
}
ssize_t pwritev64(int fd, const struct iovec *v, int c, off64_t o) {
    RESOLVE(pwritev64);
    MODIFY(fd, r_pwritev64(fd, v, c, o));
}
ssize_t pwritev2(int fd, const struct iovec *v, int c, off_t o, int f) {
    RESOLVE(pwritev2);
    MODIFY(fd, r_pwritev2(fd, v, c, o, f));
}
ssize_t pwritev64v2(int fd, const struct iovec *v, int c, off64_t o, int f) {
    RESOLVE(pwritev64v2);
    MODIFY(fd, r_pwritev64v2(fd, v, c, o, f));
}
int ftruncate(int fd, off_t len) { RESOLVE(ftruncate); MODIFY(fd, r_ftruncate(fd, len)); }
int ftruncate64(int fd, off64_t len) {
    RESOLVE(ftruncate64);
    MODIFY(fd, r_ftruncate64(fd, len));
}
int fallocate(int fd, int m, off_t o, off_t l) {
    RESOLVE(fallocate);
    MODIFY(fd, r_fallocate(fd, m, o, l));
}
int fallocate64(int fd, int m, off64_t o, off64_t l) {
    RESOLVE(fallocate64);
    MODIFY(fd, r_fallocate64(fd, m, o, l));
}
int posix_fallocate(int fd, off_t o, off_t l) {
    RESOLVE(posix_fallocate);
    MODIFY(fd, r_posix_fallocate(fd, o, l));
}
int posix_fallocate64(int fd, off64_t o, off64_t l) {
    RESOLVE(posix_fallocate64);
    MODIFY(fd, r_posix_fallocate64(fd, o, l));
}
ssize_t copy_file_range(int in, off64_t *io, int out, off64_t *oo, size_t n, unsigned int f) {
    RESOLVE(copy_file_range);
    MODIFY(out, r_copy_file_range(in, io, out, oo, n, f));
}
ssize_t sendfile(int out, int in, off_t *o, size_t n) {
    RESOLVE(sendfile);
    MODIFY(out, r_sendfile(out, in, o, n));
}
ssize_t sendfile64(int out, int in, off64_t *o, size_t n) {
    RESOLVE(sendfile64);
    MODIFY(out, r_sendfile64(out, in, o, n));
}

static int path_truncate(const char *path, off64_t len, int (*call)(const char *, off64_t)) {
    if (!begin_path(AT_FDCWD, path))
        return call(path, len);
    int saved = errno;
    tick();
    struct stat st;
    if (stat(path, &st) == 0)
        unshare_obj(find_obj(st.st_dev, st.st_ino));
    errno = saved;
    int r = call(path, len);
    END();
    return r;
}
static int truncate_shim(const char *p, off64_t l) { return r_truncate(p, (off_t)l); }
static int truncate64_shim(const char *p, off64_t l) { return r_truncate64(p, l); }
int truncate(const char *path, off_t len) {
    RESOLVE(truncate);
    return path_truncate(path, len, truncate_shim);
}
int truncate64(const char *path, off64_t len) {
    RESOLVE(truncate64);
    return path_truncate(path, len, truncate64_shim);
}

/* ---------------------------------------------------------------- hooks: syncing */

static int do_sync(int fd, int (*call)(int)) {
    int o;
    if (!begin_fd(fd, &o))
        return call(fd);
    tick();
    int r = call(fd);
    int saved = errno;
    if (r == 0) {
        if (objs[o].is_dir) {
            capture_dir(o, fd);
        } else {
            int in = reopen_ro(fd);
            snapshot_content(o, in);
            close(in);
        }
    }
    errno = saved;
    END();
    return r;
}
int fsync(int fd) { RESOLVE(fsync); return do_sync(fd, r_fsync); }
int fdatasync(int fd) { RESOLVE(fdatasync); return do_sync(fd, r_fdatasync); }

/* Starts write-back but promises nothing about durability: counted, nothing kept. */
int sync_file_range(int fd, off64_t o, off64_t n, unsigned int f) {
    RESOLVE(sync_file_range);
    MODIFY(fd, r_sync_file_range(fd, o, n, f));
}

/* Whole-file-system syncs would make everything durable; the model does not follow them,
 * so the test sees them as untracked. */
int syncfs(int fd) {
    RESOLVE(syncfs);
    if (enabled) {
        pthread_mutex_lock(&mu);
        untracked++;
        END();
    }
    return r_syncfs(fd);
}
void sync(void) {
    RESOLVE(sync);
    if (enabled) {
        pthread_mutex_lock(&mu);
        untracked++;
        END();
    }
    r_sync();
}

/* ---------------------------------------------------------------- hooks: names */

static int do_rename(int ofd, const char *old, int nfd, const char *new, unsigned int flags) {
    if (!enabled || !old || !new)
        return r_renameat2(ofd, old, nfd, new, flags);
    pthread_mutex_lock(&mu);
    int from = parent_obj(ofd, old), to = parent_obj(nfd, new);
    if (from < 0 && to < 0) {
        END();
        return flags ? r_renameat2(ofd, old, nfd, new, flags) : r_renameat(ofd, old, nfd, new);
    }
    int saved = errno;
    tick();
    errno = saved;
    int r = flags ? r_renameat2(ofd, old, nfd, new, flags) : r_renameat(ofd, old, nfd, new);
    if (r == 0 && from < 0) {
        /* Moved in from outside the roots: the model has no history for it. */
        saved = errno;
        untracked++;
        struct stat st;
        if (fstatat(nfd, new, &st, AT_SYMLINK_NOFOLLOW) == 0 && find_obj(st.st_dev, st.st_ino) < 0)
            new_obj(&st);
        errno = saved;
    }
    END();
    return r;
}
int rename(const char *o, const char *n) {
    RESOLVE(renameat);
    RESOLVE(renameat2);
    return do_rename(AT_FDCWD, o, AT_FDCWD, n, 0);
}
int renameat(int ofd, const char *o, int nfd, const char *n) {
    RESOLVE(renameat);
    RESOLVE(renameat2);
    return do_rename(ofd, o, nfd, n, 0);
}
int renameat2(int ofd, const char *o, int nfd, const char *n, unsigned int f) {
    RESOLVE(renameat);
    RESOLVE(renameat2);
    return do_rename(ofd, o, nfd, n, f);
}

/* Unlinking changes no content: a pristine file's shadow link keeps its bytes. */
#define NAMEOP(dfd, path, call)                                                          \
    do {                                                                                   \
        if (!begin_path(dfd, path))                                                      \
            return call;                                                                   \
        int saved_ = errno;                                                                \
        tick();                                                                            \
        errno = saved_;                                                                    \
        int r_ = call;                                                                     \
        END();                                                                             \
        return r_;                                                                         \
    } while (0)

int unlink(const char *p) { RESOLVE(unlink); NAMEOP(AT_FDCWD, p, r_unlink(p)); }
int unlinkat(int d, const char *p, int f) { RESOLVE(unlinkat); NAMEOP(d, p, r_unlinkat(d, p, f)); }
int rmdir(const char *p) { RESOLVE(rmdir); NAMEOP(AT_FDCWD, p, r_rmdir(p)); }
int remove(const char *p) { RESOLVE(remove); NAMEOP(AT_FDCWD, p, r_remove(p)); }

static int do_mkdir(int dfd, const char *path, mode_t mode) {
    if (!begin_path(dfd, path))
        return r_mkdirat(dfd, path, mode);
    int saved = errno;
    tick();
    errno = saved;
    int r = r_mkdirat(dfd, path, mode);
    if (r == 0) {
        saved = errno;
        struct stat st;
        if (fstatat(dfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0)
            new_obj(&st); /* durable entries: none until it is fsynced */
        errno = saved;
    }
    END();
    return r;
}
int mkdir(const char *p, mode_t m) { RESOLVE(mkdirat); return do_mkdir(AT_FDCWD, p, m); }
int mkdirat(int d, const char *p, mode_t m) { RESOLVE(mkdirat); return do_mkdir(d, p, m); }

/* Links and special files are not modelled: counted, and reported as untracked. */
#define UNMODELLED(dfd, path, call)                                                      \
    do {                                                                                   \
        if (!begin_path(dfd, path))                                                      \
            return call;                                                                   \
        int saved_ = errno;                                                                \
        tick();                                                                            \
        untracked++;                                                                       \
        errno = saved_;                                                                    \
        int r_ = call;                                                                     \
        END();                                                                             \
        return r_;                                                                         \
    } while (0)

int link(const char *o, const char *n) { RESOLVE(link); UNMODELLED(AT_FDCWD, n, r_link(o, n)); }
int linkat(int od, const char *o, int nd, const char *n, int f) {
    RESOLVE(linkat);
    UNMODELLED(nd, n, r_linkat(od, o, nd, n, f));
}
int symlink(const char *t, const char *n) {
    RESOLVE(symlink);
    UNMODELLED(AT_FDCWD, n, r_symlink(t, n));
}
int symlinkat(const char *t, int d, const char *n) {
    RESOLVE(symlinkat);
    UNMODELLED(d, n, r_symlinkat(t, d, n));
}
int mknod(const char *p, mode_t m, dev_t dev) {
    RESOLVE(mknod);
    UNMODELLED(AT_FDCWD, p, r_mknod(p, m, dev));
}
int mknodat(int d, const char *p, mode_t m, dev_t dev) {
    RESOLVE(mknodat);
    UNMODELLED(d, p, r_mknodat(d, p, m, dev));
}
