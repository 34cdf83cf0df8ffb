using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using BlockRepl.Core.Native;

namespace BlockRepl.Core;

/// <summary>
/// A raw image file: byte N of the virtual disk is byte N of the file, and never-written or trimmed ranges
/// are holes, so qemu-img, cmp and sha256sum read it directly.
/// </summary>
/// <remarks>
/// The file is opened without O_DIRECT: writes land in the page cache (like qemu-nbd --cache=writeback)
/// and are made durable by <see cref="Flush"/> (fdatasync), which FLUSH and FUA requests call. Every
/// method is safe to call from several threads at once: reads and writes are positional (pread/pwrite)
/// and nothing uses the shared file offset.
/// </remarks>
public sealed class BlockImage : IDisposable
{
    private readonly SafeFileHandle _handle;
    private readonly int _fd;
    private int _zeroRangeUnsupported;   // 1 once FALLOC_FL_ZERO_RANGE failed with EOPNOTSUPP
    private int _punchHoleUnsupported;   // 1 once FALLOC_FL_PUNCH_HOLE failed with EOPNOTSUPP

    private BlockImage(string path, SafeFileHandle handle, long size)
    {
        Path = path;
        _handle = handle;
        _fd = (int)handle.DangerousGetHandle();
        Size = size;
    }

    public string Path { get; }

    public long Size { get; }

    /// <summary>
    /// Opens an existing image, or creates a sparse one of <paramref name="size"/> bytes when the file is
    /// absent. <paramref name="size"/> 0 means "whatever the existing file holds".
    /// </summary>
    /// <exception cref="InvalidOperationException">The existing file's size differs from <paramref name="size"/>.</exception>
    public static BlockImage OpenOrCreate(string path, long size)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        var exists = File.Exists(path);
        if (!exists && size == 0)
        {
            throw new InvalidOperationException($"image {path} does not exist and no --size was given to create it");
        }

        var handle = File.OpenHandle(path, exists ? FileMode.Open : FileMode.CreateNew, FileAccess.ReadWrite, FileShare.Read);
        try
        {
            if (!exists)
            {
                RandomAccess.SetLength(handle, size); // ftruncate: sparse, reads as zeroes
            }

            var actual = RandomAccess.GetLength(handle);
            if (size != 0 && actual != size)
            {
                throw new InvalidOperationException(
                    $"image {path} is {actual} bytes but --size asks for {size} bytes; refusing to resize an existing image");
            }

            if (actual == 0)
            {
                throw new InvalidOperationException($"image {path} is empty");
            }

            return new BlockImage(path, handle, actual);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Test hook (`serve --fault-injection-file`): while set, every read, write, zero and flush fails with EIO, as a
    /// dying disk would.
    /// </summary>
    public bool InjectFailures
    {
        get => Volatile.Read(ref _injectFailures) != 0;
        set => Volatile.Write(ref _injectFailures, value ? 1 : 0);
    }

    private int _injectFailures;

    private void ThrowIfInjected(string op, long offset, long length)
    {
        if (Volatile.Read(ref _injectFailures) != 0)
        {
            throw new BlockImageException($"{op} of {Path} at {offset}+{length} failed: injected I/O error (errno {LibC.EIO})", LibC.EIO);
        }
    }

    public unsafe void Read(long offset, Span<byte> destination)
    {
        CheckRange(offset, destination.Length);
        ThrowIfInjected("pread", offset, destination.Length);
        fixed (byte* p = destination)
        {
            var done = 0;
            while (done < destination.Length)
            {
                var n = LibC.pread(_fd, p + done, destination.Length - done, offset + done);
                if (n > 0)
                {
                    done += (int)n;
                }
                else if (n == 0)
                {
                    // Past the end of a file shorter than its volume (truncated behind our back): zeroes.
                    destination[done..].Clear();
                    return;
                }
                else
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno != LibC.EINTR)
                    {
                        throw Fail("read", offset, destination.Length, errno);
                    }
                }
            }
        }
    }

    public unsafe void Write(long offset, ReadOnlySpan<byte> source)
    {
        CheckRange(offset, source.Length);
        ThrowIfInjected("pwrite", offset, source.Length);
        fixed (byte* p = source)
        {
            var done = 0;
            while (done < source.Length)
            {
                var n = LibC.pwrite(_fd, p + done, source.Length - done, offset + done);
                if (n >= 0)
                {
                    done += (int)n;
                }
                else
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno != LibC.EINTR)
                    {
                        throw Fail("write", offset, source.Length, errno);
                    }
                }
            }
        }
    }

    /// <summary>fdatasync: every write that completed before this call is durable when it returns.</summary>
    public void Flush()
    {
        ThrowIfInjected("fdatasync", 0, Size);
        while (LibC.fdatasync(_fd) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (errno != LibC.EINTR)
            {
                throw Fail("fdatasync", 0, Size, errno);
            }
        }
    }

    /// <summary>
    /// Makes the range read as zeroes. With <paramref name="mayDeallocate"/> it punches a hole; otherwise
    /// the blocks stay allocated (FALLOC_FL_ZERO_RANGE). Where the filesystem supports neither, zeroes
    /// are written, unless <paramref name="onlyIfFast"/> is set, in which case it returns false and
    /// leaves the range untouched (NBD_CMD_FLAG_FAST_ZERO).
    /// </summary>
    public bool Zero(long offset, long length, bool mayDeallocate, bool onlyIfFast)
    {
        CheckRange(offset, length);
        ThrowIfInjected("fallocate", offset, length);
        if (length == 0)
        {
            return true;
        }

        if (mayDeallocate && Volatile.Read(ref _punchHoleUnsupported) == 0)
        {
            if (TryFallocate(LibC.FALLOC_FL_PUNCH_HOLE | LibC.FALLOC_FL_KEEP_SIZE, offset, length, ref _punchHoleUnsupported))
            {
                return true;
            }
        }

        if (Volatile.Read(ref _zeroRangeUnsupported) == 0)
        {
            if (TryFallocate(LibC.FALLOC_FL_ZERO_RANGE | LibC.FALLOC_FL_KEEP_SIZE, offset, length, ref _zeroRangeUnsupported))
            {
                return true;
            }
        }

        if (onlyIfFast)
        {
            return false;
        }

        WriteZeroes(offset, length);
        return true;
    }

    /// <summary>Deallocates the range (TRIM). Reads return zeroes afterwards on every filesystem we run on.</summary>
    public void Trim(long offset, long length) => Zero(offset, length, mayDeallocate: true, onlyIfFast: false);

    /// <summary>Hints the kernel to read the range into the page cache (NBD_CMD_CACHE).</summary>
    public void Prefetch(long offset, long length)
    {
        CheckRange(offset, length);
        _ = LibC.posix_fadvise(_fd, offset, length, LibC.POSIX_FADV_WILLNEED); // advisory: errors do not matter
    }

    /// <summary>
    /// Describes [offset, offset+length) as alternating data and hole extents, from SEEK_DATA/SEEK_HOLE.
    /// Writes at most <paramref name="destination"/>.Length extents and returns how many; the last one may
    /// end before offset+length when the destination is full.
    /// </summary>
    public int GetExtents(long offset, long length, Span<ImageExtent> destination)
    {
        CheckRange(offset, length);
        var end = offset + length;
        var count = 0;
        var pos = offset;
        while (pos < end && count < destination.Length)
        {
            var data = SeekOrEnd(pos, LibC.SEEK_DATA);
            if (data > pos)
            {
                var holeEnd = Math.Min(data, end);
                destination[count++] = new ImageExtent(pos, holeEnd - pos, IsHole: true);
                pos = holeEnd;
                continue;
            }

            var hole = SeekOrEnd(pos, LibC.SEEK_HOLE);
            var dataEnd = Math.Min(Math.Max(hole, pos + 1), end);
            destination[count++] = new ImageExtent(pos, dataEnd - pos, IsHole: false);
            pos = dataEnd;
        }

        return count;
    }

    public void Dispose() => _handle.Dispose();

    private long SeekOrEnd(long pos, int whence)
    {
        var r = LibC.lseek(_fd, pos, whence);
        if (r >= 0)
        {
            return r;
        }

        var errno = Marshal.GetLastPInvokeError();
        if (errno == LibC.ENXIO)
        {
            // SEEK_DATA past the last data: the rest is a hole. SEEK_HOLE never fails this way before EOF.
            return whence == LibC.SEEK_DATA ? Size : pos;
        }

        // A filesystem without SEEK_DATA support behaves as if all is data.
        return whence == LibC.SEEK_DATA ? pos : Size;
    }

    private bool TryFallocate(int mode, long offset, long length, ref int unsupportedFlag)
    {
        while (true)
        {
            if (LibC.fallocate(_fd, mode, offset, length) == 0)
            {
                return true;
            }

            var errno = Marshal.GetLastPInvokeError();
            switch (errno)
            {
                case LibC.EINTR:
                    continue;
                case LibC.EOPNOTSUPP:
                    Volatile.Write(ref unsupportedFlag, 1);
                    return false;
                default:
                    throw Fail("fallocate", offset, length, errno);
            }
        }
    }

    private void WriteZeroes(long offset, long length)
    {
        const int Chunk = 1 << 20;
        var zeroes = new byte[(int)Math.Min(Chunk, length)];
        while (length > 0)
        {
            var n = (int)Math.Min(zeroes.Length, length);
            Write(offset, zeroes.AsSpan(0, n));
            offset += n;
            length -= n;
        }
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"range {offset}+{length} is outside the {Size}-byte image");
        }
    }

    private BlockImageException Fail(string op, long offset, long length, int errno) =>
        new($"{op} of {Path} at {offset}+{length} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})", errno);
}
