namespace BlockRepl.Core;

/// <summary>I/O counters of one volume, updated lock-free by every front-end connection.</summary>
public sealed class VolumeCounters
{
    private long _reads;
    private long _writes;
    private long _flushes;
    private long _trims;
    private long _zeroes;
    private long _bytesRead;
    private long _bytesWritten;
    private long _errors;

    public long Reads => Volatile.Read(ref _reads);

    public long Writes => Volatile.Read(ref _writes);

    public long Flushes => Volatile.Read(ref _flushes);

    public long Trims => Volatile.Read(ref _trims);

    public long Zeroes => Volatile.Read(ref _zeroes);

    public long BytesRead => Volatile.Read(ref _bytesRead);

    public long BytesWritten => Volatile.Read(ref _bytesWritten);

    public long Errors => Volatile.Read(ref _errors);

    internal void Read(int bytes)
    {
        Interlocked.Increment(ref _reads);
        Interlocked.Add(ref _bytesRead, bytes);
    }

    internal void Write(int bytes)
    {
        Interlocked.Increment(ref _writes);
        Interlocked.Add(ref _bytesWritten, bytes);
    }

    internal void Flush() => Interlocked.Increment(ref _flushes);

    internal void Trim() => Interlocked.Increment(ref _trims);

    internal void Zero() => Interlocked.Increment(ref _zeroes);

    internal void Error() => Interlocked.Increment(ref _errors);
}
