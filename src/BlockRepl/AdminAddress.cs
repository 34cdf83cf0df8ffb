using System.Net;
using System.Net.Sockets;
using Grpc.Net.Client;

namespace BlockRepl;

/// <summary>The admin endpoint: <c>unix:PATH</c> (the default, under the data dir) or <c>127.0.0.1:PORT</c>.</summary>
internal sealed record AdminAddress(string? UnixPath, IPEndPoint? Tcp)
{
    public static AdminAddress Parse(string text)
    {
        if (text.StartsWith("unix:", StringComparison.Ordinal) && text.Length > 5)
        {
            return new AdminAddress(Path.GetFullPath(text[5..]), null);
        }

        if (IPEndPoint.TryParse(text, out var ip) && text.Contains(':', StringComparison.Ordinal))
        {
            return new AdminAddress(null, ip);
        }

        throw new UserError($"--admin '{text}' is not an address: use unix:PATH or 127.0.0.1:PORT");
    }

    public override string ToString() => UnixPath is not null ? "unix:" + UnixPath : Tcp!.ToString();

    /// <summary>A gRPC channel to the daemon's admin service on this address (unix socket or TCP, h2c).</summary>
    internal GrpcChannel CreateChannel() =>
        GrpcChannel.ForAddress(new Uri("http://blockrepl-admin/"), new GrpcChannelOptions
        {
            MaxReceiveMessageSize = 16 * 1024 * 1024,
            HttpHandler = new SocketsHttpHandler
            {
                ConnectTimeout = TimeSpan.FromSeconds(5),
                UseProxy = false,
                ConnectCallback = ConnectAsync,
                // A status watch over TCP notices a daemon host that vanished without closing the connection.
                KeepAlivePingDelay = TimeSpan.FromSeconds(10),
                KeepAlivePingTimeout = TimeSpan.FromSeconds(10),
                KeepAlivePingPolicy = HttpKeepAlivePingPolicy.WithActiveRequests,
            },
        });

    private async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, CancellationToken cancellationToken)
    {
        var socket = UnixPath is not null
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(Tcp!.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            await socket.ConnectAsync(UnixPath is not null ? new UnixDomainSocketEndPoint(UnixPath) : Tcp!, cancellationToken).ConfigureAwait(false);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
