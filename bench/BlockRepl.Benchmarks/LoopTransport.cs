using BlockRepl.Nbd;

namespace BlockRepl.Benchmarks;

/// <summary>
/// Feeds the same batch of requests to a connection <see cref="Rounds"/> times, then end of stream; replies
/// are counted and dropped. No sockets: what is measured is parsing, dispatch, the volume and reply encoding.
/// </summary>
internal sealed class LoopTransport(byte[] handshake, byte[] batch) : INbdTransport
{
    private int _round = -1;
    private int _pos;

    public int Rounds { get; set; }

    public long BytesSent { get; private set; }

    public TimeSpan? ReceiveTimeout { set { } }

    public void Reset()
    {
        _round = -1;
        _pos = 0;
        BytesSent = 0;
    }

    public int Receive(Span<byte> buffer)
    {
        var current = _round < 0 ? handshake : batch;
        if (_pos == current.Length)
        {
            if (_round + 1 >= Rounds)
            {
                return 0;
            }

            _round++;
            _pos = 0;
            current = batch;
        }

        var n = Math.Min(buffer.Length, current.Length - _pos);
        current.AsSpan(_pos, n).CopyTo(buffer);
        _pos += n;
        return n;
    }

    public void Send(ReadOnlySpan<byte> data) => BytesSent += data.Length;

    public void ShutdownReceive() { }

    public void Dispose() { }
}
