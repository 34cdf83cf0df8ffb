using System.Runtime.InteropServices;

namespace BlockRepl.Core.Native;

/// <summary>
/// The few libc calls the runtime does not expose: fdatasync, fallocate (punch hole, zero range),
/// lseek with SEEK_DATA/SEEK_HOLE, and posix_fadvise. Linux x86_64/arm64 only.
/// </summary>
internal static partial class LibC
{
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int ENXIO = 6;
    public const int ENOSPC = 28;
    public const int EOPNOTSUPP = 95;

    // fallocate(2) modes.
    public const int FALLOC_FL_KEEP_SIZE = 0x01;
    public const int FALLOC_FL_PUNCH_HOLE = 0x02;
    public const int FALLOC_FL_ZERO_RANGE = 0x10;

    // lseek(2) whence values (Linux).
    public const int SEEK_DATA = 3;
    public const int SEEK_HOLE = 4;

    public const int POSIX_FADV_WILLNEED = 3;

    [LibraryImport("libc", SetLastError = true)]
    public static partial int fdatasync(int fd);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int fallocate(int fd, int mode, long offset, long len);

    [LibraryImport("libc", SetLastError = true)]
    public static partial long lseek(int fd, long offset, int whence);

    /// <summary>Returns an errno value directly (it does not set errno).</summary>
    [LibraryImport("libc")]
    public static partial int posix_fadvise(int fd, long offset, long len, int advice);
}

internal static partial class LibC
{
    [LibraryImport("libc", SetLastError = true)]
    public static unsafe partial nint pread(int fd, byte* buf, nint count, long offset);

    [LibraryImport("libc", SetLastError = true)]
    public static unsafe partial nint pwrite(int fd, byte* buf, nint count, long offset);
}

internal static partial class LibC
{
    public const int O_RDONLY = 0;
    public const int O_DIRECTORY = 0x10000;

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int fsync(int fd);

    [LibraryImport("libc")]
    public static partial int close(int fd);
}
