using BlockRepl.Nbd;

namespace BlockRepl.Tests.Unit;

/// <summary>
/// An in-memory NBD transport: the client's bytes are delivered in pieces cut at the given offsets, and
/// everything the server sends is collected. End of input is end of stream.
/// </summary>
internal sealed class ScriptedTransport : INbdTransport
{
    private readonly byte[] _input;
    private readonly Queue<int> _cuts;
    private readonly MemoryStream _output = new();
    private int _position;

    public ScriptedTransport(byte[] input, params int[] cuts)
    {
        _input = input;
        _cuts = new Queue<int>(cuts.Where(c => c > 0 && c < input.Length).Order());
    }

    public byte[] Output => _output.ToArray();

    public TimeSpan? ReceiveTimeout { set { } }

    public int Receive(Span<byte> buffer)
    {
        var limit = _input.Length;
        while (_cuts.Count > 0 && _cuts.Peek() <= _position)
        {
            _cuts.Dequeue();
        }

        if (_cuts.Count > 0)
        {
            limit = _cuts.Peek();
        }

        var n = Math.Min(buffer.Length, limit - _position);
        _input.AsSpan(_position, n).CopyTo(buffer);
        _position += n;
        return n;
    }

    public void Send(ReadOnlySpan<byte> data)
    {
        lock (_output)
        {
            _output.Write(data);
        }
    }

    public void ShutdownReceive() => _position = _input.Length;

    public void Dispose() { }
}
