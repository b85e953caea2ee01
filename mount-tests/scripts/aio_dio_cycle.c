/* Direct (O_DIRECT, asynchronous through Linux AIO) writes against buffered reads of the same
 * range, byte for byte: after a write has completed, every read must see it, whatever the
 * open flags (after fstests' aio-dio-cycle-write).
 *
 * usage: aio_dio_cycle FILE CYCLES
 * Each cycle writes a new pattern over the first 1 MiB with one AIO O_DIRECT write per
 * 64 KiB while another process keeps reading the range through the page cache, waits for
 * every write and for that reader to stop, then reads the range through a buffered
 * descriptor (kept open across cycles) and, in a forked child, through a fresh one. Exits 1
 * at the first mismatch, naming the cycle and offset. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define SPAN (1 << 20)
#define PIECE (64 << 10)
#define PIECES (SPAN / PIECE)

static void fill(unsigned char *p, size_t n, unsigned cycle, size_t off) {
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)((off + i) * 31 + cycle * 7 + 1);
}

static int check(const char *who, int fd, unsigned cycle, unsigned char *buf) {
    ssize_t got = pread(fd, buf, SPAN, 0);
    if (got != SPAN) {
        fprintf(stderr, "%s: cycle %u: short read %zd\n", who, cycle, got);
        return 1;
    }
    unsigned char want[256];
    for (size_t off = 0; off < SPAN; off += sizeof want) {
        fill(want, sizeof want, cycle, off);
        if (memcmp(buf + off, want, sizeof want) != 0) {
            fprintf(stderr, "%s: cycle %u: stale or wrong bytes at offset %zu\n", who, cycle, off);
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s FILE CYCLES\n", argv[0]);
        return 2;
    }
    unsigned cycles = (unsigned)atoi(argv[2]);
    int dfd = open(argv[1], O_RDWR | O_CREAT | O_DIRECT, 0644);
    int bfd = open(argv[1], O_RDONLY);
    if (dfd < 0 || bfd < 0) {
        perror("open");
        return 2;
    }
    aio_context_t ctx = 0;
    if (syscall(SYS_io_setup, PIECES, &ctx) != 0) {
        perror("io_setup");
        return 2;
    }
    unsigned char *wbuf, *rbuf = malloc(SPAN);
    if (posix_memalign((void **)&wbuf, 4096, SPAN) != 0 || !rbuf)
        return 2;
    for (unsigned c = 1; c <= cycles; c++) {
        fill(wbuf, SPAN, c, 0);
        struct iocb cbs[PIECES], *list[PIECES];
        memset(cbs, 0, sizeof cbs);
        for (int i = 0; i < PIECES; i++) {
            cbs[i].aio_fildes = dfd;
            cbs[i].aio_lio_opcode = IOCB_CMD_PWRITE;
            cbs[i].aio_buf = (uint64_t)(uintptr_t)(wbuf + i * PIECE);
            cbs[i].aio_nbytes = PIECE;
            cbs[i].aio_offset = (int64_t)i * PIECE;
            list[i] = &cbs[i];
        }
        /* The racing reader: buffered reads of the range until the pipe closes. */
        int stop[2];
        if (pipe(stop) != 0)
            return 2;
        pid_t reader = fork();
        if (reader == 0) {
            close(stop[1]);
            fcntl(stop[0], F_SETFL, O_NONBLOCK);
            int fd = open(argv[1], O_RDONLY);
            char b[PIECE], x;
            for (unsigned i = 0;; i++) {
                if (read(stop[0], &x, 1) == 0)
                    _exit(0);
                if (pread(fd, b, sizeof b, (off_t)(i % PIECES) * PIECE) < 0)
                    _exit(2);
            }
        }
        close(stop[0]);
        if (syscall(SYS_io_submit, ctx, PIECES, list) != PIECES) {
            perror("io_submit");
            return 2;
        }
        struct io_event ev[PIECES];
        long done = 0;
        while (done < PIECES) {
            long n = syscall(SYS_io_getevents, ctx, 1, PIECES - done, ev, NULL);
            if (n < 0) {
                perror("io_getevents");
                return 2;
            }
            for (long i = 0; i < n; i++)
                if (ev[i].res != PIECE) {
                    fprintf(stderr, "cycle %u: aio write returned %lld\n", c, (long long)ev[i].res);
                    return 1;
                }
            done += n;
        }
        close(stop[1]);
        int rstatus;
        waitpid(reader, &rstatus, 0);
        if (check("buffered reader", bfd, c, rbuf))
            return 1;
        pid_t pid = fork();
        if (pid == 0) {
            int fd = open(argv[1], O_RDONLY);
            _exit(fd < 0 ? 2 : check("other process", fd, c, rbuf));
        }
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            return 1;
    }
    printf("ok\n");
    return 0;
}
