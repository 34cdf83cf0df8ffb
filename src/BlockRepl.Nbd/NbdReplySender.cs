namespace BlockRepl.Nbd;

/// <summary>
/// Collects replies of one connection and sends them in as few writes as possible.
/// </summary>
/// <remarks>
/// Corking: the connection's reader appends replies without sending while more requests are already
/// buffered, and calls <see cref="Flush"/> before it blocks for more input, so a burst of 32 requests
/// costs one send. Replies completed on other threads (flushes, FUA) append and send at once.
/// Everything happens under one lock, which also keeps a reply's header and payload contiguous on the
/// wire. A client that stops reading makes <see cref="Flush"/> block, which stops the reader: that is the
/// connection's backpressure, and it bounds the buffer to its capacity.
/// </remarks>
internal sealed class NbdReplySender
{
    private readonly INbdTransport _transport;
    private readonly byte[] _buffer;
    private int _length;
    private bool _broken;

    public NbdReplySender(INbdTransport transport, int capacity)
    {
        _transport = transport;
        _buffer = GC.AllocateUninitializedArray<byte>(capacity, pinned: true);
    }

    public Lock Gate { get; } = new();

    public int Capacity => _buffer.Length;

    /// <summary>True once a send failed; later replies are dropped (the connection is going away).</summary>
    public bool IsBroken => _broken;

    /// <summary>Returns room for <paramref name="count"/> bytes, sending what is buffered if needed. Hold <see cref="Gate"/>.</summary>
    public Span<byte> Reserve(int count)
    {
        if (_buffer.Length - _length < count)
        {
            FlushLocked();
            if (count > _buffer.Length)
            {
                throw new ArgumentOutOfRangeException(nameof(count), "larger than the send buffer");
            }
        }

        return _buffer.AsSpan(_length, count);
    }

    /// <summary>Marks <paramref name="count"/> reserved bytes as part of the stream. Hold <see cref="Gate"/>.</summary>
    public void Commit(int count) => _length += count;

    /// <summary>Sends buffered bytes and then <paramref name="data"/> directly. Hold <see cref="Gate"/>.</summary>
    public void SendDirect(ReadOnlySpan<byte> data)
    {
        FlushLocked();
        if (!_broken)
        {
            try
            {
                _transport.Send(data);
            }
            catch (Exception ex) when (IsTransportFailure(ex))
            {
                _broken = true;
            }
        }
    }

    public void Flush()
    {
        lock (Gate)
        {
            FlushLocked();
        }
    }

    public void FlushLocked()
    {
        if (_length == 0)
        {
            return;
        }

        if (!_broken)
        {
            try
            {
                _transport.Send(_buffer.AsSpan(0, _length));
            }
            catch (Exception ex) when (IsTransportFailure(ex))
            {
                _broken = true;
            }
        }

        _length = 0;
    }

    internal static bool IsTransportFailure(Exception ex) =>
        ex is System.Net.Sockets.SocketException or IOException or ObjectDisposedException;
}
