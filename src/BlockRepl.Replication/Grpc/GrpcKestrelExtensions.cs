using System.Net;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace BlockRepl.Replication.Grpc;

/// <summary>Kestrel settings a gRPC endpoint needs: HTTP/2 without TLS (h2c) and no body limits.</summary>
internal static class GrpcKestrelExtensions
{
    /// <summary>
    /// Listens for h2c (HTTP/2 with prior knowledge) on <paramref name="endpoint"/> (port 0: any free port)
    /// and lifts the request body size and data rate limits, which would cut long-lived streams.
    /// </summary>
    public static void ListenGrpc(this KestrelServerOptions options, IPEndPoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Limits.MaxRequestBodySize = null;
        options.Limits.MinRequestBodyDataRate = null;
        options.Listen(endpoint, listen => listen.Protocols = HttpProtocols.Http2);
    }
}
