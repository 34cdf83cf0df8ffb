using Microsoft.Extensions.Logging;

namespace BlockRepl.Replication.Grpc;

/// <summary>Log events of the gRPC layer (event ids 400-449).</summary>
internal static partial class GrpcLog
{
    [LoggerMessage(400, LogLevel.Error, "gRPC call {Method} failed in its handler")]
    public static partial void HandlerFailed(ILogger logger, string method, Exception exception);

    [LoggerMessage(401, LogLevel.Debug, "gRPC call {Method} cancelled by the client")]
    public static partial void CallCancelled(ILogger logger, string method);

    [LoggerMessage(402, LogLevel.Debug, "gRPC call {Method} exceeded its deadline ({Timeout})")]
    public static partial void DeadlineExceeded(ILogger logger, string method, TimeSpan timeout);

    [LoggerMessage(403, LogLevel.Warning, "gRPC call {Method}: ignoring malformed grpc-timeout '{Value}'")]
    public static partial void InvalidTimeout(ILogger logger, string method, string value);

    [LoggerMessage(404, LogLevel.Information, "gRPC call {Method} refused: {Reason}")]
    public static partial void RequestRefused(ILogger logger, string method, string reason);

    [LoggerMessage(405, LogLevel.Debug, "gRPC call {Method} ended with {StatusCode}: {Detail}")]
    public static partial void CallEnded(ILogger logger, string method, StatusCode statusCode, string detail);
}
