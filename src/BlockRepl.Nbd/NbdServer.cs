using BlockRepl.Core.Hosting;
using Microsoft.Extensions.Logging;

namespace BlockRepl.Nbd;

/// <summary>
/// Accepts NBD clients on the shared <see cref="ConnectionHost"/>: a thread per connection, blocking sockets,
/// a connection cap (see the host for why).
/// </summary>
public sealed class NbdServer : IDisposable
{
    private readonly IReadOnlyDictionary<string, NbdExport> _exports;
    private readonly ConnectionHost _host;

    public NbdServer(IEnumerable<NbdExport> exports, ILogger log, int maxConnections = 64)
    {
        _exports = exports.ToDictionary(e => e.Name, StringComparer.Ordinal);
        _host = new ConnectionHost("nbd", maxConnections,
            (socket, remote) => new NbdConnection(new SocketTransport(socket), _exports, remote, log),
            new ConnectionHostEvents(
                endpoint => NbdLog.Listening(log, endpoint),
                (endpoint, ex) => NbdLog.AcceptFailed(log, endpoint, ex),
                (remote, limit) => NbdLog.TooManyConnections(log, remote, limit),
                connections => NbdLog.Stopping(log, connections)));
    }

    public int MaxConnections => _host.MaxConnections;

    /// <summary>The endpoints actually bound (a TCP port 0 resolved to the real port).</summary>
    public IReadOnlyList<NbdEndpoint> BoundEndpoints => [.. _host.BoundEndpoints.Select(e => new NbdEndpoint(e))];

    public int ConnectionCount => _host.ConnectionCount;

    public void Listen(NbdEndpoint endpoint) => _host.Listen(endpoint.EndPoint);

    /// <summary>
    /// Stops accepting, asks every connection to finish (requests in flight complete, requests not yet
    /// started get ESHUTDOWN) and waits up to <paramref name="timeout"/> for them.
    /// </summary>
    public bool Stop(TimeSpan timeout) => _host.Stop(timeout);

    /// <summary>
    /// Ends every current client connection (requests in flight complete; the clients reconnect). Used after a
    /// role change, so clients see the export's new read-only flag. Returns how many were asked to end.
    /// </summary>
    public int DisconnectClients() => _host.DisconnectClients();

    public void Dispose() => _host.Dispose();
}
