namespace BlockRepl.Replication.Grpc;

/// <summary>Limits and transport settings of a <see cref="GrpcChannel"/>.</summary>
internal sealed class GrpcChannelOptions
{
    /// <summary>The largest response message accepted (checked from the length prefix); default 4 MiB.</summary>
    public int MaxReceiveMessageSize { get; set; } = GrpcServerOptions.DefaultMaxReceiveMessageSize;

    /// <summary>The largest request message the client sends (RESOURCE_EXHAUSTED beyond). Default: no limit.</summary>
    public int MaxSendMessageSize { get; set; } = int.MaxValue - GrpcFraming.HeaderSize;

    /// <summary>How long a TCP connect may take before the call fails with UNAVAILABLE.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>HTTP/2 PING interval on an idle connection, so a dead peer is noticed on a quiet stream.</summary>
    public TimeSpan KeepAlivePingDelay { get; set; } = TimeSpan.FromSeconds(20);

    /// <summary>How long a PING may stay unanswered before the connection is closed.</summary>
    public TimeSpan KeepAlivePingTimeout { get; set; } = TimeSpan.FromSeconds(20);

    /// <summary>Opens the transport instead of a TCP connection to the address (e.g. a unix socket).</summary>
    public Func<SocketsHttpConnectionContext, CancellationToken, ValueTask<Stream>>? ConnectCallback { get; set; }
}
