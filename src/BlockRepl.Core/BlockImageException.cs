namespace BlockRepl.Core;

/// <summary>
/// An I/O failure of the local image, with the errno that caused it, so a front end can map it to its own
/// error code (NBD_EIO, NBD_ENOSPC, SCSI MEDIUM ERROR...).
/// </summary>
public sealed class BlockImageException : IOException
{
    public BlockImageException(string message, int errno) : base(message) => Errno = errno;

    public BlockImageException(string message, int errno, Exception inner) : base(message, inner) => Errno = errno;

    public BlockImageException() : this("local image I/O failed", Native.LibC.EIO) { }

    public BlockImageException(string message) : this(message, Native.LibC.EIO) { }

    public BlockImageException(string message, Exception inner) : this(message, Native.LibC.EIO, inner) { }

    /// <summary>The Linux errno, e.g. 5 (EIO) or 28 (ENOSPC).</summary>
    public int Errno { get; }

    public bool IsNoSpace => Errno == Native.LibC.ENOSPC;
}
