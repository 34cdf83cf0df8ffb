using Google.Protobuf;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core.Features;
using Microsoft.Extensions.Logging;

namespace BlockRepl.Replication.Grpc;

/// <summary>
/// The server pipeline of one method: checks the request is a gRPC call, sets up the deadline, runs the
/// handler, and ends the response with the status (grpc/doc/PROTOCOL-HTTP2.md, "Responses"):
/// <code>
///   Response -> (Response-Headers *Length-Prefixed-Message Trailers) / Trailers-Only
/// </code>
/// A call that fails before any message was written answers Trailers-Only (grpc-status in the HEADERS
/// frame that ends the stream); otherwise grpc-status / grpc-message go in the trailers.
/// This is the service boundary: a handler's unexpected exception is logged here once and becomes UNKNOWN.
/// </summary>
internal sealed class ServerCallHandler
{
    private readonly string _method;
    private readonly GrpcServerOptions _options;
    private readonly ILogger _logger;

    public ServerCallHandler(string method, GrpcServerOptions options, ILogger logger)
    {
        _method = method;
        _options = options;
        _logger = logger;
    }

    public Task HandleUnaryAsync<TRequest, TResponse>(
        HttpContext http, Func<TRequest, ServerCallContext, Task<TResponse>> handler)
        where TRequest : class, IMessage<TRequest>, new()
        where TResponse : class, IMessage<TResponse> =>
        RunCallAsync(http, async context =>
        {
            var reader = new HttpContextStreamReader<TRequest>(http.Request.BodyReader, context, _options.MaxReceiveMessageSize);
            var request = await reader.ReadSingleAsync().ConfigureAwait(false);
            var response = await handler(request, context).ConfigureAwait(false);
            var writer = new HttpContextStreamWriter<TResponse>(http.Response, context, _options.MaxSendMessageSize);
            await writer.WriteAsync(response).ConfigureAwait(false);
        });

    public Task HandleDuplexAsync<TRequest, TResponse>(
        HttpContext http, Func<IAsyncStreamReader<TRequest>, IServerStreamWriter<TResponse>, ServerCallContext, Task> handler)
        where TRequest : class, IMessage<TRequest>, new()
        where TResponse : class, IMessage<TResponse> =>
        RunCallAsync(http, context => handler(
            new HttpContextStreamReader<TRequest>(http.Request.BodyReader, context, _options.MaxReceiveMessageSize),
            new HttpContextStreamWriter<TResponse>(http.Response, context, _options.MaxSendMessageSize),
            context));

    /// <summary>One call: validate, run the body, turn its outcome (or exception) into the status trailers.</summary>
    private async Task RunCallAsync(HttpContext http, Func<ServerCallContext, Task> body)
    {
        if (!TryBeginCall(http, out var context))
        {
            return;
        }

        using (context)
        {
            Status status;
            try
            {
                await body(context).ConfigureAwait(false);
                status = context.Status;
            }
            catch (Exception ex)
            {
                status = StatusFromException(ex, http, context);
            }

            EndCall(http, status);
        }
    }

    /// <summary>Validates the request (protocol, content type), lifts body limits, reads grpc-timeout.</summary>
    private bool TryBeginCall(HttpContext http, out ServerCallContext context)
    {
        context = null!;
        var request = http.Request;
        if (!HttpProtocol.IsHttp2(request.Protocol))
        {
            Refuse(http, StatusCodes.Status426UpgradeRequired, $"Request protocol '{request.Protocol}' is not supported (gRPC needs HTTP/2).");
            return false;
        }

        if (!GrpcProtocol.IsGrpcContentType(request.ContentType))
        {
            Refuse(http, StatusCodes.Status415UnsupportedMediaType, $"Content-Type '{request.ContentType}' is not supported.");
            return false;
        }

        // A replication stream lives for days and may idle: no body size cap, no minimum data rate.
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } maxBody)
        {
            maxBody.MaxRequestBodySize = null;
        }

        if (http.Features.Get<IHttpMinRequestBodyDataRateFeature>() is { } minRate)
        {
            minRate.MinDataRate = null;
        }

        TimeSpan? timeout = null;
        var timeoutHeader = request.Headers[GrpcTimeout.HeaderName].ToString();
        if (timeoutHeader.Length > 0)
        {
            if (GrpcTimeout.TryParse(timeoutHeader, out var parsed))
            {
                timeout = parsed;
            }
            else
            {
                GrpcLog.InvalidTimeout(_logger, _method, timeoutHeader);
            }
        }

        var response = http.Response;
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = GrpcProtocol.ContentType;
        response.Headers[GrpcProtocol.AcceptEncodingHeader] = "identity";
        context = new ServerCallContext(http, _method, timeout);
        return true;
    }

    private Status StatusFromException(Exception ex, HttpContext http, ServerCallContext context)
    {
        if (context.DeadlineExceeded && ex is OperationCanceledException or RpcException { StatusCode: StatusCode.Cancelled })
        {
            GrpcLog.DeadlineExceeded(_logger, _method, context.Timeout ?? TimeSpan.Zero);
            return new Status(StatusCode.DeadlineExceeded, "Deadline Exceeded");
        }

        if (http.RequestAborted.IsCancellationRequested
            && ex is OperationCanceledException or IOException or ConnectionAbortedException)
        {
            GrpcLog.CallCancelled(_logger, _method);
            return new Status(StatusCode.Cancelled, "Call canceled by the client.");
        }

        if (ex is RpcException rpc)
        {
            return rpc.Status;
        }

        GrpcLog.HandlerFailed(_logger, _method, ex);
        return new Status(StatusCode.Unknown, "Exception was thrown by handler.");
    }

    private void EndCall(HttpContext http, Status status)
    {
        GrpcLog.CallEnded(_logger, _method, status.StatusCode, status.Detail);
        if (http.RequestAborted.IsCancellationRequested)
        {
            // The stream was reset: there is nobody to send a status to.
            return;
        }

        var response = http.Response;
        if (!response.HasStarted)
        {
            // Trailers-Only: the status goes in the only HEADERS frame, which Kestrel ends the stream with.
            response.Headers[GrpcProtocol.StatusHeader] = GrpcProtocol.FormatStatusCode(status.StatusCode);
            if (status.Detail.Length > 0)
            {
                response.Headers[GrpcProtocol.MessageHeader] = PercentEncoding.Encode(status.Detail);
            }

            return;
        }

        response.AppendTrailer(GrpcProtocol.StatusHeader, GrpcProtocol.FormatStatusCode(status.StatusCode));
        if (status.Detail.Length > 0)
        {
            response.AppendTrailer(GrpcProtocol.MessageHeader, PercentEncoding.Encode(status.Detail));
        }
    }

    private void Refuse(HttpContext http, int httpStatus, string reason)
    {
        GrpcLog.RequestRefused(_logger, _method, reason);
        http.Response.StatusCode = httpStatus;
        http.Response.Headers[GrpcProtocol.StatusHeader] = GrpcProtocol.FormatStatusCode(StatusCode.Internal);
        http.Response.Headers[GrpcProtocol.MessageHeader] = PercentEncoding.Encode(reason);
    }
}
