namespace BlockRepl.Nbd;

/// <summary>
/// The bytes received on one connection and not yet parsed. Fixed capacity: a frame larger than the
/// buffer (a big WRITE payload) is read straight into its own destination with <see cref="ReadExactly"/>.
/// </summary>
internal sealed class NbdReceiveBuffer
{
    private readonly INbdTransport _transport;
    private readonly byte[] _buffer;
    private int _start;
    private int _end;

    public NbdReceiveBuffer(INbdTransport transport, int capacity)
    {
        _transport = transport;
        _buffer = GC.AllocateUninitializedArray<byte>(capacity, pinned: true);
    }

    public int Capacity => _buffer.Length;

    public ReadOnlySpan<byte> Available => _buffer.AsSpan(_start, _end - _start);

    public int AvailableCount => _end - _start;

    public void Consume(int count)
    {
        _start += count;
        if (_start == _end)
        {
            _start = _end = 0;
        }
    }

    /// <summary>
    /// Receives until at least <paramref name="minimum"/> bytes (at most <see cref="Capacity"/>) are
    /// available. Returns false at end of stream.
    /// </summary>
    public bool Fill(int minimum)
    {
        if (minimum > _buffer.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(minimum), "larger than the receive buffer");
        }

        while (_end - _start < minimum)
        {
            if (_buffer.Length - _start < minimum)
            {
                // Not enough room after _start: move the unparsed bytes to the front.
                _buffer.AsSpan(_start, _end - _start).CopyTo(_buffer);
                _end -= _start;
                _start = 0;
            }

            var n = _transport.Receive(_buffer.AsSpan(_end));
            if (n <= 0)
            {
                return false;
            }

            _end += n;
        }

        return true;
    }

    /// <summary>Fills <paramref name="destination"/> from buffered bytes, then from the transport. False at end of stream.</summary>
    public bool ReadExactly(Span<byte> destination)
    {
        var buffered = Math.Min(destination.Length, _end - _start);
        Available[..buffered].CopyTo(destination);
        Consume(buffered);
        destination = destination[buffered..];
        while (!destination.IsEmpty)
        {
            var n = _transport.Receive(destination);
            if (n <= 0)
            {
                return false;
            }

            destination = destination[n..];
        }

        return true;
    }

    /// <summary>Discards <paramref name="count"/> bytes of the stream without storing them. False at end of stream.</summary>
    public bool Skip(long count)
    {
        while (count > 0)
        {
            if (_end == _start && !Fill(1))
            {
                return false;
            }

            var n = (int)Math.Min(count, _end - _start);
            Consume(n);
            count -= n;
        }

        return true;
    }
}
