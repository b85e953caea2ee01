/* fsx.c: an fsx-style random-operation workload, for the benchmark (benches/bench.sh).
 *
 * Written for bitcloud after the classic fsx (xfstests' file system exerciser): one file,
 * NUMOPS operations picked at random among read, write, mapped read, mapped write (msync
 * MS_SYNC, as fsx does), truncate, fallocate (KEEP_SIZE or not), hole punch and zero
 * range, with fsx's shape: offsets anywhere up to MAXLEN, lengths up to 64 KiB,
 * an fstat size check after every operation, and every byte read compared with a copy of
 * the file kept in memory. As fsx does, each fallocate mode is tried once at the start and
 * an operation the filesystem refuses (EOPNOTSUPP) is counted and skipped from then on, so
 * the mix keeps fsx's proportions; collapse and insert, which the kernel refuses for every
 * FUSE filesystem, are always skipped. The output names what was skipped.
 *
 * With a fifth argument "classic" the mix is only the five operations every filesystem
 * here supports (read, write, mapped read, mapped write, truncate): then every target does
 * the same work, where a target that refuses fallocate modes skips the most costly ones.
 *
 * usage: fsx FILE NUMOPS MAXLEN SEED [classic]
 * Prints "ok <seconds>" and exits 0, or names the first mismatch and exits 1. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAXOPLEN (64 * 1024)

/* The classic fsx's ten operations, in its order. */
enum { OP_READ, OP_WRITE, OP_MAPREAD, OP_MAPWRITE, OP_TRUNCATE, OP_FALLOCATE, OP_PUNCH,
       OP_ZERO, OP_COLLAPSE, OP_INSERT, OP_MAX };

static uint64_t rng;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static unsigned char *good, *tmp;
static long file_size, maxlen, pagesize;
static int fd;
static const char *path;

static void die(const char *what, long op) {
    fprintf(stderr, "fsx: op %ld: %s: %s\n", op, what, strerror(errno));
    exit(1);
}

static void compare(const unsigned char *got, long off, long len, long op, const char *how) {
    if (memcmp(got, good + off, len) != 0) {
        for (long i = 0; i < len; i++)
            if (got[i] != good[off + i]) {
                fprintf(stderr, "fsx: op %ld (%s): byte %ld is %#x, expected %#x\n", op, how,
                        off + i, got[i], good[off + i]);
                exit(1);
            }
    }
}

static void fill(long off, long len) {
    for (long i = 0; i < len; i++)
        good[off + i] = (unsigned char)(next() % 255 + 1);
}

static void grow_model(long new_size) {
    if (new_size > file_size)
        memset(good + file_size, 0, new_size - file_size);
    file_size = new_size;
}

int main(int argc, char **argv) {
    if (argc != 5 && !(argc == 6 && strcmp(argv[5], "classic") == 0)) {
        fprintf(stderr, "usage: fsx FILE NUMOPS MAXLEN SEED [classic]\n");
        return 2;
    }
    int kinds = argc == 6 ? OP_FALLOCATE : OP_MAX;
    path = argv[1];
    long numops = atol(argv[2]);
    maxlen = atol(argv[3]);
    rng = (uint64_t)atol(argv[4]) * 0x9E3779B97F4A7C15ull | 1;
    pagesize = sysconf(_SC_PAGESIZE);
    good = calloc(maxlen + MAXOPLEN, 1);
    tmp = malloc(maxlen + MAXOPLEN);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || !good || !tmp)
        die("open", -1);
    /* fsx's probe: a mode the filesystem refuses is left out of the run. */
    int can_alloc = 1, can_keep = 1, can_punch = 1, can_zero = 1;
    int *can[] = {&can_alloc, &can_keep, &can_punch, &can_zero};
    int modes[] = {0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                   FALLOC_FL_ZERO_RANGE};
    for (int i = 0; i < 4; i++) {
        if (fallocate(fd, modes[i], 0, 1) != 0 && errno == EOPNOTSUPP)
            *can[i] = 0;
        if (ftruncate(fd, 0) != 0)
            die("ftruncate after probing fallocate", -1);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long skipped = 0;
    for (long op = 0; op < numops; op++) {
        int kind = (int)(next() % (uint64_t)kinds);
        long off = (long)(next() % (uint64_t)maxlen);
        long len = (long)(next() % (MAXOPLEN + 1));
        switch (kind) {
        case OP_READ:
        case OP_MAPREAD:
            if (file_size == 0)
                break;
            off %= file_size;
            if (off + len > file_size)
                len = file_size - off;
            if (len == 0)
                break;
            if (kind == OP_READ) {
                if (pread(fd, tmp, len, off) != len)
                    die("pread", op);
                compare(tmp, off, len, op, "read");
            } else {
                long pg = off & ~(pagesize - 1);
                unsigned char *p = mmap(NULL, len + off - pg, PROT_READ, MAP_SHARED, fd, pg);
                if (p == MAP_FAILED)
                    die("mmap read", op);
                compare(p + (off - pg), off, len, op, "mapped read");
                munmap(p, len + off - pg);
            }
            break;
        case OP_WRITE:
        case OP_MAPWRITE:
            if (off + len > maxlen)
                len = maxlen - off;
            if (len == 0)
                break;
            fill(off, len);
            if (kind == OP_WRITE) {
                if (off > file_size)
                    memset(good + file_size, 0, off - file_size);
                if (pwrite(fd, good + off, len, off) != len)
                    die("pwrite", op);
                if (off + len > file_size)
                    file_size = off + len;
            } else {
                if (off + len > file_size) {
                    if (off > file_size)
                        memset(good + file_size, 0, off - file_size);
                    if (ftruncate(fd, off + len) != 0)
                        die("ftruncate before mapped write", op);
                    file_size = off + len;
                }
                long pg = off & ~(pagesize - 1);
                unsigned char *p =
                    mmap(NULL, len + off - pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, pg);
                if (p == MAP_FAILED)
                    die("mmap write", op);
                memcpy(p + (off - pg), good + off, len);
                if (msync(p, len + off - pg, MS_SYNC) != 0)
                    die("msync", op);
                munmap(p, len + off - pg);
            }
            break;
        case OP_TRUNCATE: {
            long size = (long)(next() % (uint64_t)maxlen);
            if (ftruncate(fd, size) != 0)
                die("ftruncate", op);
            grow_model(size);
            break;
        }
        case OP_FALLOCATE: {
            int keep = (int)(next() & 1);
            if (!can_alloc || (keep && !can_keep)) {
                skipped++;
                break;
            }
            if (off + len > maxlen)
                len = maxlen - off;
            if (len == 0)
                break;
            if (fallocate(fd, keep ? FALLOC_FL_KEEP_SIZE : 0, off, len) != 0)
                die("fallocate", op);
            if (!keep && off + len > file_size)
                grow_model(off + len);
            break;
        }
        case OP_PUNCH:
            if (!can_punch) {
                skipped++;
                break;
            }
            if (file_size == 0)
                break;
            off %= file_size;
            if (off + len > file_size)
                len = file_size - off;
            if (len == 0)
                break;
            if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) != 0)
                die("punch hole", op);
            memset(good + off, 0, len);
            break;
        case OP_ZERO: {
            if (!can_zero) {
                skipped++;
                break;
            }
            if (file_size == 0)
                break;
            off %= file_size;
            if (off + len > file_size)
                len = file_size - off;
            if (len == 0)
                break;
            int keep = (int)(next() & 1);
            if (fallocate(fd, FALLOC_FL_ZERO_RANGE | (keep ? FALLOC_FL_KEEP_SIZE : 0), off, len) != 0)
                die("zero range", op);
            memset(good + off, 0, len);
            break;
        }
        default:
            skipped++;
            break;
        }
        struct stat st;
        if (fstat(fd, &st) != 0)
            die("fstat", op);
        if (st.st_size != file_size) {
            fprintf(stderr, "fsx: op %ld: size is %ld, expected %ld\n", op, (long)st.st_size,
                    file_size);
            return 1;
        }
    }
    /* Everything, once more, through a fresh descriptor. */
    close(fd);
    fd = open(path, O_RDONLY);
    if (fd < 0 || pread(fd, tmp, file_size, 0) != file_size)
        die("final read", numops);
    compare(tmp, 0, file_size, numops, "final read");
    close(fd);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("ok %.3f (%ld ops, %ld skipped: collapse, insert%s%s%s%s)\n", secs, numops, skipped,
           can_alloc ? "" : ", fallocate", can_keep ? "" : ", keep-size fallocate",
           can_punch ? "" : ", punch hole", can_zero ? "" : ", zero range");
    return 0;
}
