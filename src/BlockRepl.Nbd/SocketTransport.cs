using System.Net.Sockets;

namespace BlockRepl.Nbd;

internal sealed class SocketTransport : INbdTransport
{
    private readonly Socket _socket;

    public SocketTransport(Socket socket)
    {
        _socket = socket;
        _socket.Blocking = true;
        if (socket.AddressFamily is System.Net.Sockets.AddressFamily.InterNetwork or System.Net.Sockets.AddressFamily.InterNetworkV6)
        {
            _socket.NoDelay = true; // replies are small and latency-bound: never wait for Nagle
        }
    }

    public TimeSpan? ReceiveTimeout
    {
        set => _socket.ReceiveTimeout = value is { } t ? (int)t.TotalMilliseconds : 0;
    }

    public int Receive(Span<byte> buffer) => _socket.Receive(buffer, SocketFlags.None);

    public void Send(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            var n = _socket.Send(data, SocketFlags.None);
            data = data[n..];
        }
    }

    public void ShutdownReceive()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Receive);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Already closed by the peer or by us.
        }
    }

    public void Dispose() => _socket.Dispose();
}
